"""A trained ranker on disk and its predictions.

workspace/models/rankers/<name>/: ranker.pt (the network's weights), features.json (FeatureSpec),
lambdamart.txt (the LightGBM baseline), ranker.json (lineage: data and train configs, value
weights chosen on calib queries, the value grid, epochs, timings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.atomic import atomic_path
from pipelines.ranking.features import FeatureSpec
from pipelines.ranking.model import Ranker, RankerConfig, engagement_probabilities, relevance_probabilities
from pipelines.workspace import Workspace

CUMULATIVE = ["p_grade_ge1", "p_grade_ge2", "p_grade_ge3"]  # P(grade >= k), k = 1..3
OUTPUTS = CUMULATIVE + ["expected_relevance", "p_click", "p_order"]


class UnknownRanker(LookupError):
    """No trained ranker of that name; the message lists the ones there are."""


@dataclass(frozen=True)
class RankerFiles:
    root: Path

    @classmethod
    def of(cls, ws: Workspace, name: str) -> RankerFiles:
        return cls(ws.models_dir / "rankers" / name)

    @property
    def meta(self) -> Path:
        return self.root / "ranker.json"

    def save(self, model: Ranker, spec: FeatureSpec, booster, meta: dict) -> None:
        """Write the ranker's directory whole (a previous ranker of the name is replaced at once)."""
        with atomic_path(self.root) as tmp:
            tmp.mkdir()
            torch.save(model.state_dict(), tmp / "ranker.pt")
            (tmp / "features.json").write_text(json.dumps(spec.to_dict(), indent=1))
            booster.save_model(str(tmp / "lambdamart.txt"))
            (tmp / self.meta.name).write_text(json.dumps(meta, indent=2))

    def require(self) -> RankerFiles:
        """self if the ranker was trained, else UnknownRanker listing the ones that were."""
        if not self.meta.exists():
            there = sorted(p.name for p in self.root.parent.glob("[!.]*") if (p / self.meta.name).exists())
            raise UnknownRanker(f"no ranker {self.root.name!r} in {self.root.parent}; trained: {there or 'none'} "
                                "(unisup rank train --name NAME)")
        return self

    def load(self) -> tuple[Ranker, FeatureSpec, object, dict]:
        """(network in eval mode, its FeatureSpec, the LightGBM booster, ranker.json)."""
        self.require()
        import lightgbm as lgb

        meta = json.loads(self.meta.read_text())
        spec = FeatureSpec.from_dict(json.loads((self.root / "features.json").read_text()))
        model = Ranker(len(spec.inputs), RankerConfig(hidden=tuple(meta["ranker"]["hidden"]),
                                                      dropout=meta["ranker"]["dropout"]))
        model.load_state_dict(torch.load(self.root / "ranker.pt", weights_only=True))
        model.eval()
        return model, spec, lgb.Booster(model_file=str(self.root / "lambdamart.txt")), meta


@torch.inference_mode()
def predict(model: Ranker, spec: FeatureSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """OUTPUTS per row: cumulative relevance probabilities, expected grade, P(click), P(order) given
    examined; rows' index kept."""
    model.eval()
    out = model(torch.from_numpy(spec.matrix(rows)))
    cumulative, expected = relevance_probabilities(out["relevance"])
    p_click, p_order = engagement_probabilities(out)
    values = np.column_stack([cumulative.numpy(), expected.numpy(), p_click.numpy(), p_order.numpy()])
    return pd.DataFrame(values, columns=OUTPUTS, index=rows.index)
