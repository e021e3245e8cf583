"""Settings of the engagement models (kept apart from the code that needs xgboost, so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipelines.workspace import ConfigError

TARGETS = ("click", "order")  # pCTR: P(click | impression); pCVR: P(order | click)


@dataclass(frozen=True)
class EngagementConfig:
    """Which impressions train, calibrate and test the models, and how the trees grow.

    Days count from the impression log's start (pipelines.simulation.users): training days
    first_day .. the calibration days, then `calibration_days` to fit isotonic calibration on, then
    the last `heldout_days` to report on."""

    negative_rate: float = field(default=0.1, metadata={"help": "Share w of negative training rows kept"})
    first_day: int = field(default=7, metadata={"help": "First training day (the 7-day user windows are full)"})
    calibration_days: int = field(default=1, metadata={"help": "Days after training that fit the calibration"})
    heldout_days: int = field(default=3, metadata={"help": "Last days of the log, reported on"})
    user_features: bool = field(default=True, metadata={"help": "Read the user views (False: the ablation)"})
    rounds: int = field(default=300, metadata={"help": "Boosting rounds"})
    max_depth: int = field(default=8, metadata={"help": "Tree depth"})
    learning_rate: float = field(default=0.1, metadata={"help": "Shrinkage per round"})
    threads: int = field(default=2, metadata={"help": "XGBoost threads"})
    seed: int = field(default=0, metadata={"help": "Seed of downsampling and of the trees' sampling"})

    def __post_init__(self):
        if not 0.0 < self.negative_rate <= 1.0:
            raise ConfigError(f"negative_rate {self.negative_rate}: expected the share of negatives kept, 0 < w <= 1")
        if min(self.calibration_days, self.heldout_days) < 1 or self.first_day < 0:
            raise ConfigError("calibration_days and heldout_days must be >= 1 and first_day >= 0")

    def to_dict(self) -> dict:
        return asdict(self)
