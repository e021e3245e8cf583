"""Stage 1 of the teacher: a cheap scorer run on every candidate pair.

Features: pipelines.retrieval.pair_features (PairScorer, FEATURES) over the prior's channels
(BM25, MiniLM dense, character n-grams), computed per pair against the whole catalog.

Model: scikit-learn HistGradientBoostingClassifier, multi-class over the four grades (log loss, so
its probabilities start out close to calibrated; isotonic calibration in calibrate.py finishes the
job on queries it was not fitted on). Fitting on ~50k pairs takes seconds; scoring is microseconds a
pair, the features cost more than the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier

from pipelines.atomic import atomic_path
from pipelines.retrieval.pair_features import FEATURES
from pipelines.teacher.grades import GRADES


@dataclass
class Stage1Config:
    """Hyper-parameters of the stage 1 gradient-boosted classifier."""

    max_iter: int = field(default=300, metadata={"help": "boosting rounds"})
    learning_rate: float = field(default=0.05, metadata={"help": "shrinkage per round"})
    max_leaf_nodes: int = field(default=31, metadata={"help": "leaves per tree"})
    min_samples_leaf: int = field(default=40, metadata={"help": "smallest leaf; guards noisy grades"})
    l2_regularization: float = field(default=1.0, metadata={"help": "L2 penalty on leaf values"})
    seed: int = field(default=0, metadata={"help": "random_state of the booster"})


class Stage1:
    """Multi-class gradient boosting over FEATURES -> raw (uncalibrated) grade probabilities."""

    def __init__(self, model: HistGradientBoostingClassifier, config: Stage1Config):
        self.model, self.config = model, config

    @classmethod
    def fit(cls, features: pd.DataFrame, grades: Sequence[int], weights: Sequence[float] | None = None,
            config: Stage1Config | None = None) -> Stage1:
        config = config or Stage1Config()
        model = HistGradientBoostingClassifier(
            loss="log_loss", max_iter=config.max_iter, learning_rate=config.learning_rate,
            max_leaf_nodes=config.max_leaf_nodes, min_samples_leaf=config.min_samples_leaf,
            l2_regularization=config.l2_regularization, early_stopping=False, random_state=config.seed)
        model.fit(features[FEATURES].to_numpy(np.float32), np.asarray(grades), sample_weight=weights)
        return cls(model, config)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """(n, 4) P(grade = g); a grade absent from the fit data gets probability 0."""
        raw = self.model.predict_proba(features[FEATURES].to_numpy(np.float32))
        probs = np.zeros((len(features), GRADES))
        probs[:, self.model.classes_.astype(int)] = raw
        return probs

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            joblib.dump({"model": self.model, "config": asdict(self.config)}, tmp)
        return path

    @classmethod
    def load(cls, path: Path) -> Stage1:
        blob = joblib.load(path)
        return cls(blob["model"], Stage1Config(**blob["config"]))
