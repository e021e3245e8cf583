"""Calibration of pCTR / pCVR: downsample negatives, correct for it, then isotonic on a later day.

The recipe (Walmart DSP's), and why each step:

1. Train XGBoost on logs with every positive kept and each negative kept with probability `rate`
   (`downsample_negatives`). Clicks and conversions are rare, so negatives are almost all of the
   volume and carry little information each; dropping most of them cuts training cost by ~1 / rate
   without losing a single rare positive.
2. Undo the shift that causes (`correct_downsampling`). In the kept rows a true rate r shows as
   r / (r + (1 - r) * rate), so the model learns odds inflated by 1 / rate; q = p / (p + (1 - p) / rate)
   maps its score back to the full population (He et al. 2014, "Practical lessons from predicting
   clicks on ads at Facebook").
3. Fit an isotonic map from the corrected score to observed outcomes on a later day's logs, not
   downsampled and never trained on (`IsotonicCalibrator`). The correction is exact only for a model
   calibrated on its training distribution, which boosted trees are not quite, and engagement rates
   drift from day to day; a later day is what the model will be served on. Isotonic rather than Platt
   scaling: logs have rows enough to fit any monotone shape, and being monotone it keeps the ranking
   (up to ties). Its fitted levels depend on the score only through the order, so the correction
   changes the calibrated output only where it interpolates between thresholds (linear in the corrected
   score, not the raw one); it matters most as the output of a model served without a calibrator, and
   it keeps the isotonic map near the diagonal, so the map shows the model's residual miscalibration.

Calibration is measured by ECE over equal-mass bins (`expected_calibration_error`, `reliability`),
alongside ranking quality and log loss (`scores`), and drawn as a reliability diagram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from pipelines.atomic import atomic_path

ECE_BINS = 20
LOG_LOSS_EPS = 1e-7
PLOT_FLOOR = 1e-4  # log axes: CTRs are small, and an empty-of-positives bin has observed rate 0


def _check_rate(rate: float) -> None:
    if not 0 < rate <= 1:
        raise ValueError(f"downsampling rate {rate!r}: expected the share of negatives kept, 0 < rate <= 1")


def downsample_negatives(labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Keep mask: every positive, and each negative with probability `rate` (np.random.default_rng(seed))."""
    _check_rate(rate)
    labels = np.asarray(labels).astype(bool)
    return labels | (np.random.default_rng(seed).random(labels.shape) < rate)


def correct_downsampling(p: np.ndarray, rate: float) -> np.ndarray:
    """Probabilities learnt on rows with negatives kept at `rate`, mapped back to the full population.

    Downsampling multiplies the odds by 1 / rate (a true r shows as r / (r + (1 - r) * rate));
    q = p / (p + (1 - p) / rate) divides them back."""
    _check_rate(rate)
    p = np.asarray(p, np.float64)
    return p / (p + (1 - p) / rate)


@dataclass
class IsotonicCalibrator:
    """Monotone map from a score to an observed rate, kept as its fitted thresholds only, so it is
    saved as JSON (`to_dict`) and never pickled: loading it runs no code and outlives sklearn versions."""

    x_thresholds: list[float] = field(default_factory=list)
    y_thresholds: list[float] = field(default_factory=list)

    def fit(self, p: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1, increasing=True)
        iso.fit(np.asarray(p, np.float64), np.asarray(y, np.float64))
        self.x_thresholds = [float(x) for x in iso.X_thresholds_]
        self.y_thresholds = [float(y) for y in iso.y_thresholds_]
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        """Linear interpolation between thresholds, the end values beyond them: sklearn's predict with
        out_of_bounds="clip"."""
        if not self.x_thresholds:
            raise ValueError("IsotonicCalibrator.predict before fit (or from_dict)")
        return np.interp(np.asarray(p, np.float64), self.x_thresholds, self.y_thresholds)

    def to_dict(self) -> dict[str, list[float]]:
        return {"x_thresholds": list(self.x_thresholds), "y_thresholds": list(self.y_thresholds)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> IsotonicCalibrator:
        return cls([float(x) for x in d["x_thresholds"]], [float(y) for y in d["y_thresholds"]])


def reliability(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-mass bin of p: mean_predicted, observed_rate, count.

    Bin edges are quantiles of p (as sklearn's calibration_curve(strategy="quantile")); tied
    predictions stay in one bin, so a bin may hold more than N / bins rows and empty bins are dropped."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if y.shape != p.shape or not len(p):
        raise ValueError(f"reliability: labels {y.shape} and predictions {p.shape} must be the same non-empty shape")
    which = np.searchsorted(np.quantile(p, np.linspace(0, 1, bins + 1))[1:-1], p)
    count = np.bincount(which, minlength=bins)
    kept = count > 0
    return pd.DataFrame({"mean_predicted": (np.bincount(which, p, bins) / np.maximum(count, 1))[kept],
                         "observed_rate": (np.bincount(which, y, bins) / np.maximum(count, 1))[kept],
                         "count": count[kept]})


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """sum over bins of (n_b / N) |mean p_b - mean y_b|, over equal-mass (quantile) bins of p.

    Equal-mass, not equal-width: CTR predictions crowd near 0, so equal-width bins would put almost
    every row in the first bin and the ECE would say nothing about where the rows are."""
    table = reliability(y, p, bins)
    gap = (table["mean_predicted"] - table["observed_rate"]).abs()
    return float((table["count"] * gap).sum() / table["count"].sum())


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float | int | None]:
    """Ranking (roc_auc, pr_auc: None when y has one class), log loss, ECE and the mean rates."""
    y, p = np.asarray(y), np.asarray(p, np.float64)
    both = len(np.unique(y)) == 2
    result = {"roc_auc": roc_auc_score(y, p) if both else None,
              "pr_auc": average_precision_score(y, p) if both else None,
              "log_loss": log_loss(y, np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS), labels=[0, 1]),
              "ece": expected_calibration_error(y, p),
              "mean_predicted": p.mean(),
              "observed_rate": y.mean()}
    return {**{k: None if v is None else round(float(v), 6) for k, v in result.items()}, "rows": len(y)}


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """One PNG: observed rate against mean prediction per equal-mass bin for each named (y, p), on
    log-log axes floored at PLOT_FLOOR, with the diagonal and each curve's ECE in the legend."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display backend

    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.plot([PLOT_FLOOR, 1], [PLOT_FLOOR, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, (y, p) in curves.items():
        table = reliability(y, p)
        ax.plot(np.clip(table["mean_predicted"], PLOT_FLOOR, 1), np.clip(table["observed_rate"], PLOT_FLOOR, 1),
                marker="o", markersize=4, label=f"{name} (ECE {expected_calibration_error(y, p):.4f})")
    ax.set(xscale="log", yscale="log", xlim=(PLOT_FLOOR, 1), ylim=(PLOT_FLOOR, 1), title=title,
           xlabel="mean predicted probability", ylabel="observed rate")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path
