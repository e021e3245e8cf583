"""Which training queries fit the teacher and which calibrate it; isotonic calibration; ECE.

Roles of the training queries (dev queries have no role: nothing here ever sees them):

    role(query) = "calib" if int(sha256("teacher-calib:" + normalized text)[:4 bytes]) % 100 < 20
                  else "fit"

A hash of the normalized text, like pipelines.text.query_split but salted differently, so the two
draws are independent: about 20% of training queries (16% of all) calibrate, the rest fit. Both
stages are fitted on "fit" queries only; both calibrators, and the cascade's threshold, are fitted
on "calib" queries only, so every calibrator sees outputs of a model that never saw those queries.

Calibration works on the cumulative probabilities c_k = P(grade >= k), k = 1..3: one isotonic
regression per k maps the stage's raw c_k to the observed rate of grade >= k. The fitted step
function is then centred (Oron & Flournoy 2017, "centred isotonic regression"): each flat block is
replaced by its midpoint and the map interpolates linearly between midpoints, so it stays monotone
and calibrated but is strictly increasing between blocks, i.e. it keeps the ranking a stage had
instead of collapsing whole score ranges into ties. The ordinal structure
makes this the natural target (each c_k is a binary "at least this relevant" question with a
monotone answer, which is what isotonic regression fits; calibrating the four one-vs-rest
probabilities instead would break their order). The three calibrated c_k are then made monotone
(c1 >= c2 >= c3) and turned back into four probabilities that sum to 1 (grades.from_cumulative);
expected grade and confidence follow from those.

Each calibrator is fitted on the calib queries' judged pairs only: human grades are what the
probabilities should agree with (fitting on the weak negatives too, tried first, made dev ECE worse
than no calibration, 0.069 vs 0.066 for stage 1). Beyond the judged range the map is anchored at
(0, 0) and (1, 1): deep unjudged candidates score below every judged pair, and a plain isotonic fit
would flatten all of them to the lowest judged level; the anchors keep their raw order and let a
raw probability near 0 stay near 0.

ECE (expected calibration error), the figure the report quotes: over pairs with a human grade,
P(relevant) = P(grade >= 2) against the 0/1 outcome "human relevance >= 2", in 10 equal-width bins
of the predicted probability, ECE = sum over bins of (pairs in bin / all pairs) x |mean predicted -
observed rate|. `top_label_ece` is the same on the confidence (largest grade probability) against
"the most probable grade is the human grade".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import joblib
import numpy as np
from sklearn.isotonic import IsotonicRegression

from pipelines.teacher.grades import RELEVANT_GRADE, cumulative, from_cumulative, p_relevant
from pipelines.text import normalize_query

CALIB_PERCENT = 20
BINS = 10


def teacher_role(text: str) -> str:
    """'calib' for ~20% of (training) queries by salted hash of the normalized text, else 'fit'."""
    digest = hashlib.sha256(("teacher-calib:" + normalize_query(text)).encode("utf-8")).digest()
    return "calib" if int.from_bytes(digest[:4], "big") % 100 < CALIB_PERCENT else "fit"


def centred_isotonic(x: np.ndarray, y: np.ndarray,
                     weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Knots (xs, ys) of the centred isotonic fit of y on x: one knot per flat block of the
    isotonic step function, at the block's mid x; np.interp(x, xs, ys) evaluates it."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(x, y, sample_weight=weights)
    xs, ys = iso.X_thresholds_, iso.y_thresholds_  # block edges; equal ys = the same block
    block = np.concatenate([[0], np.cumsum(np.diff(ys) > 0)])
    centre = np.array([(xs[block == b].min() + xs[block == b].max()) / 2 for b in range(block[-1] + 1)])
    level = np.array([ys[block == b][0] for b in range(block[-1] + 1)])
    if centre[0] > 0:  # anchors beyond the fitted range (module docstring)
        centre, level = np.r_[0.0, centre], np.r_[0.0, level]
    if centre[-1] < 1:
        centre, level = np.r_[centre, 1.0], np.r_[level, 1.0]
    return centre, level


class GradeCalibrator:
    """Centred isotonic regression per cumulative probability P(grade >= k), k = 1..3."""

    def __init__(self, knots: list[tuple[np.ndarray, np.ndarray]]):
        self.knots = knots

    @classmethod
    def fit(cls, probs: np.ndarray, grades: np.ndarray, weights: np.ndarray | None = None) -> GradeCalibrator:
        cum, grades = cumulative(probs), np.asarray(grades)
        return cls([centred_isotonic(cum[:, k - 1], (grades >= k).astype(np.float64), weights)
                    for k in range(1, cum.shape[1] + 1)])

    def transform(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated (n, 4) probabilities, monotone in each raw cumulative probability."""
        cum = cumulative(probs)
        calibrated = np.column_stack([np.interp(cum[:, k], xs, ys) for k, (xs, ys) in enumerate(self.knots)])
        return from_cumulative(calibrated)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.knots, path)
        return path

    @classmethod
    def load(cls, path: Path) -> GradeCalibrator:
        return cls(joblib.load(path))


def binned_ece(predicted: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> float:
    """Equal-width-bin ECE of probabilities `predicted` against 0/1 `outcome`."""
    predicted, outcome = np.asarray(predicted, np.float64), np.asarray(outcome, np.float64)
    if len(predicted) == 0:
        return float("nan")
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(predicted[mask].mean() - outcome[mask].mean())
    return float(total / len(predicted))


def ece(probs: np.ndarray, grades: np.ndarray, bins: int = BINS) -> float:
    """ECE of P(grade >= 2) against human relevance >= 2 (see the module docstring)."""
    return binned_ece(p_relevant(probs), np.asarray(grades) >= RELEVANT_GRADE, bins)


def top_label_ece(probs: np.ndarray, grades: np.ndarray, bins: int = BINS) -> float:
    """ECE of the confidence (max probability) against 'the argmax grade is the human grade'."""
    probs = np.asarray(probs)
    return binned_ece(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(grades), bins)
