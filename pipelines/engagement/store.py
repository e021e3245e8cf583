"""Trained engagement models on disk and their calibrated predictions.

workspace/models/engagement/<name>/: <target>.json (the XGBoost model, its own JSON format),
<target>.calibration.json (features, downsampling rate, isotonic thresholds), engagement.json (the
training report: config, lineage with the feature services' definition hashes, held-out metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.atomic import atomic_path
from pipelines.engagement.calibration import IsotonicCalibrator, correct_downsampling
from pipelines.engagement.config import TARGETS
from pipelines.workspace import Workspace


class UnknownEngagementModel(LookupError):
    """No engagement models of that name; the message lists those there are."""


@dataclass
class EngagementModel:
    """One target's booster over named feature columns, the rate its negatives were kept at, and the
    isotonic map from the corrected score to the observed rate."""

    target: str
    booster: object
    features: list[str]
    negative_rate: float
    calibrator: IsotonicCalibrator

    def raw(self, rows: pd.DataFrame) -> np.ndarray:
        """The booster's score on rows (missing columns or values read as missing)."""
        import xgboost as xgb

        x = rows.reindex(columns=self.features).to_numpy(np.float32, na_value=np.nan)
        return self.booster.predict(xgb.DMatrix(x, nthread=1))

    def corrected(self, rows: pd.DataFrame) -> np.ndarray:
        return correct_downsampling(self.raw(rows), self.negative_rate)

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities: raw -> corrected for downsampling -> isotonic."""
        return self.calibrator.predict(self.corrected(rows))


@dataclass(frozen=True)
class EngagementFiles:
    root: Path

    @classmethod
    def of(cls, ws: Workspace, name: str) -> EngagementFiles:
        return cls(ws.models_dir / "engagement" / name)

    @property
    def meta(self) -> Path:
        return self.root / "engagement.json"

    def save(self, models: dict[str, EngagementModel], report: dict) -> None:
        """Write the directory whole (a previous set of the name is replaced at once)."""
        with atomic_path(self.root) as tmp:
            tmp.mkdir()
            for target, model in models.items():
                model.booster.save_model(str(tmp / f"{target}.json"))
                (tmp / f"{target}.calibration.json").write_text(json.dumps({
                    "features": model.features, "negative_rate": model.negative_rate,
                    "isotonic": model.calibrator.to_dict()}))
            (tmp / self.meta.name).write_text(json.dumps(report, indent=2))

    def load(self) -> dict[str, EngagementModel]:
        """target -> EngagementModel, for the targets saved."""
        if not self.meta.exists():
            there = sorted(p.name for p in self.root.parent.glob("[!.]*") if (p / self.meta.name).exists())
            raise UnknownEngagementModel(f"no engagement models {self.root.name!r} in {self.root.parent}; "
                                         f"trained: {there or 'none'} (unisup engagement train)")
        import xgboost as xgb

        models = {}
        for target in TARGETS:
            if not (self.root / f"{target}.json").exists():
                continue
            booster = xgb.Booster()
            booster.load_model(str(self.root / f"{target}.json"))
            spec = json.loads((self.root / f"{target}.calibration.json").read_text())
            models[target] = EngagementModel(target, booster, spec["features"], spec["negative_rate"],
                                             IsotonicCalibrator.from_dict(spec["isotonic"]))
        return models
