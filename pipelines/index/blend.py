"""The final score of a retrieved item: a logistic blend of the model score and online features.

    score = sigmoid(intercept + sum_i w_i * z_i)      i over model_score and the numeric features
    z_i   = (t_i(x_i) - mean_i) / scale_i, and 0 where x_i is missing
    t_i   = log1p for heavy-tailed counts (non-negative, max > 10 when fitted), identity otherwise

The score estimates P(relevance >= 2) for the pair, the DESIGN's "relevant". Weights, means and
scales are fitted offline (fit_blend.py) on a point-in-time set of the same FeatureService the
service reads online, so a feature means the same thing in both. A missing feature contributes
nothing (mean imputation): an item with no features at all (a query never seen, the online store
down, with_features=false) gets a score increasing in its model score alone, i.e. the index's own
order — fit_blend refuses weights where that would not hold (w_model_score <= 0).

This module is the one definition; fit_blend.py and serving both call `Blend`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines.atomic import write_json

BLEND_FILE = "blend.json"
MODEL_SCORE = "model_score"
LOG_ABOVE = 10.0  # a non-negative feature whose fitted max exceeds this is taken as log1p
FORMULA = ("score = sigmoid(intercept + sum_i weights_i * z_i); z_i = (t_i(x_i) - mean_i) / scale_i, 0 where "
           "x_i is missing; t_i = log1p where log1p_i else identity; inputs_0 = model_score (cosine)")


@dataclass(frozen=True)
class Blend:
    """Fitted blend parameters, aligned with `inputs` (model_score first)."""

    inputs: tuple[str, ...]
    log1p: tuple[bool, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    fitted: dict = field(default_factory=dict)  # provenance and fit metrics (fit_blend.py)

    @property
    def features(self) -> tuple[str, ...]:
        """The online features the blend reads (inputs without the model score)."""
        return self.inputs[1:]

    def logits_raw(self, raw: np.ndarray) -> np.ndarray:
        """Linear predictor from raw_inputs(...) (NaN = missing)."""
        return self.intercept + self.terms_raw(raw).sum(axis=1)

    def terms_raw(self, raw: np.ndarray) -> np.ndarray:
        """(n, len(inputs)): each input's share w_i * z_i of the linear predictor (the inspector's
        decomposition of a score; a missing input's share is 0)."""
        return standardize(raw, self.log1p, self.mean, self.scale) * np.asarray(self.weights)

    def scores(self, model_scores: np.ndarray, columns: Mapping[str, Sequence] | None) -> np.ndarray:
        """P(relevant) per item, float64 in (0, 1); `columns` None means no features."""
        return 1.0 / (1.0 + np.exp(-self.logits_raw(raw_inputs(self.inputs, model_scores, columns))))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / BLEND_FILE
        write_json(path, {"formula": FORMULA, **asdict(self)}, indent=2, default=str)
        return path

    @classmethod
    def load(cls, directory: Path) -> Blend | None:
        """The blend saved in `directory`, or None if none was fitted."""
        path = Path(directory) / BLEND_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data.pop("formula", None)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def raw_inputs(inputs: Sequence[str], model_scores: np.ndarray,
               columns: Mapping[str, Sequence] | None) -> np.ndarray:
    """(n, len(inputs)) float64: the model score, then each feature with NaN where missing."""
    n = len(model_scores)
    out = np.full((n, len(inputs)), np.nan)
    out[:, 0] = model_scores
    for j, name in enumerate(inputs[1:], start=1):
        if columns is not None and name in columns:
            out[:, j] = np.asarray(columns[name], dtype=np.float64)  # None -> NaN
    return out


def standardize(raw: np.ndarray, log1p: Sequence[bool], mean: Sequence[float],
                scale: Sequence[float]) -> np.ndarray:
    """z-scores of raw inputs after their transforms; missing (NaN) become 0, the fitted mean."""
    raw = raw.copy()
    logged = np.asarray(log1p, dtype=bool)
    raw[:, logged] = np.log1p(np.maximum(raw[:, logged], 0.0))
    return np.nan_to_num((raw - np.asarray(mean)) / np.asarray(scale), nan=0.0)


def fit_transform(inputs: Sequence[str], raw: np.ndarray) -> tuple[list[bool], list[float], list[float]]:
    """Per input: log1p flag, mean and scale of the transformed values (NaNs ignored)."""
    log1p, mean, scale = [], [], []
    for j in range(raw.shape[1]):
        col = raw[:, j]
        seen = col[~np.isnan(col)]
        take_log = j > 0 and seen.size > 0 and seen.min() >= 0 and seen.max() > LOG_ABOVE
        if take_log:
            seen = np.log1p(seen)
        log1p.append(bool(take_log))
        mean.append(float(seen.mean()) if seen.size else 0.0)
        sd = float(seen.std()) if seen.size else 0.0
        scale.append(sd if sd > 1e-12 else 1.0)  # a constant feature must not divide by zero
    return log1p, mean, scale
