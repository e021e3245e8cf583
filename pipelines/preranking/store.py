"""A trained pre-ranker on disk and its scores.

workspace/models/prerankers/<name>/: <model>-<training>.pt for light/strong x uniform/hap, light.json and
strong.json (FeatureSpec), preranker.json (data and train configs, rows per group, epochs, the
gradient-conflict probes), conflict.png.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.atomic import atomic_path
from pipelines.preranking.model import Scorer
from pipelines.ranking.features import FeatureSpec
from pipelines.ranking.model import RankerConfig
from pipelines.workspace import Workspace


class UnknownPreranker(LookupError):
    """No trained pre-ranker of that name; the message lists the ones there are."""


@dataclass(frozen=True)
class PrerankerFiles:
    root: Path

    @classmethod
    def of(cls, ws: Workspace, name: str) -> PrerankerFiles:
        return cls(ws.models_dir / "prerankers" / name)

    @property
    def meta(self) -> Path:
        return self.root / "preranker.json"

    def save(self, models: dict[str, Scorer], specs: dict[str, FeatureSpec], meta: dict) -> None:
        with atomic_path(self.root) as tmp:
            tmp.mkdir()
            for key, model in models.items():
                torch.save(model.state_dict(), tmp / f"{key}.pt")
            for kind, spec in specs.items():
                (tmp / f"{kind}.json").write_text(json.dumps(spec.to_dict(), indent=1))
            (tmp / self.meta.name).write_text(json.dumps(meta, indent=2))

    def load(self) -> tuple[dict[str, Scorer], dict[str, FeatureSpec], dict]:
        """({"light-hap": model, ...} in eval mode, {"light": spec, "strong": spec}, preranker.json)."""
        if not self.meta.exists():
            there = sorted(p.name for p in self.root.parent.glob("[!.]*") if (p / self.meta.name).exists())
            raise UnknownPreranker(f"no pre-ranker {self.root.name!r} in {self.root.parent}; trained: "
                                   f"{there or 'none'} (unisup prerank train --name NAME)")
        meta = json.loads(self.meta.read_text())
        specs = {kind: FeatureSpec.from_dict(json.loads((self.root / f"{kind}.json").read_text()))
                 for kind in meta["shapes"]}
        models = {}
        for path in sorted(self.root.glob("*.pt")):
            kind = path.stem.partition("-")[0]
            shape = meta["shapes"][kind]
            model = Scorer(len(specs[kind].inputs), RankerConfig(hidden=tuple(shape["hidden"]),
                                                                dropout=shape["dropout"]))
            model.load_state_dict(torch.load(path, weights_only=True))
            models[path.stem] = model.eval()
        return models, specs, meta


@torch.inference_mode()
def scores(model: Scorer, spec: FeatureSpec, rows: pd.DataFrame) -> np.ndarray:
    """The model's logit per row, float64."""
    model.eval()
    return model(torch.from_numpy(spec.matrix(rows))).numpy().astype(np.float64)
