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

Which pairs the calibrators are fitted on (`CalibrationConfig.sample`) is the one choice here that
the data cannot settle. The teacher labels every candidate of a training query (~200 a query, 97%
never judged), but the only human grades are Home Depot's, given to what its own lexical engine
showed: 83% of judged pairs are relevant. The three samples, all on calib queries only:

- "judged": the judged pairs, as they come. Calibrated for the judged population; measured on
  Home Depot, stage 1's calibrated P(relevant) >= 0.5 for 86% of unjudged candidates (mean 0.64),
  where a blind hand audit of 60 random unjudged candidates found 28% relevant.
- "weighted": covariate-shift (importance) weighting. A logistic regression on the channel ranks,
  fusion score, agreement and stage 1's raw cumulative logits tells judged pairs from a uniform
  sample of unjudged candidates (each weighted by the candidates it stands for); each judged pair
  is weighted by 1 / P(judged | x), clipped at `max_weight` and scaled to mean 1, so the judged
  sample's features are distributed like the candidates'. It assumes a judged pair and an
  unjudged one that look the same are equally likely relevant (missing at random given x), and
  the data say that assumption is the flaw, not the sample: judged pairs that no channel ranks in
  its top 30 are still 70-80% relevant, because Home Depot showed them for reasons our features
  do not see, while the unjudged candidates at those ranks were not shown. Measured (`unisup
  signals report`): the share stays at 86% and the mean rises from 0.64 to 0.68.
- "candidates" (default): the calib queries' candidate population itself: judged pairs with
  their grades plus a uniform sample of unjudged candidates, each weighted by the candidates it
  stands for, with soft targets rho x m_k(x): m_k is the "judged" map, rho = `unjudged_relevance`
  how likely an unjudged candidate is relevant relative to a judged pair the teacher scores the
  same. A pattern-mixture model for data missing not at random (Little 1993), with rho its
  sensitivity parameter: rho = 1 is the missing-at-random case (the "judged" map again), rho = 0
  counts every unjudged candidate irrelevant, as NDCG does (unjudged candidates as grade 0). The
  judged data cannot estimate rho; 0.5 is the blind audit's 28% over the "judged" map's 0.65 mean
  on the same 60 pairs (0.43), rounded up, and the report shows the figures for 0 .. 0.75 beside it.

Why the default pays on judged pairs: one monotone map per stage cannot be calibrated for both
populations: the teacher tells a judged pair from an unjudged candidate only partly (stage 1's raw
P(relevant) does it with AUC 0.85 on the calib queries), and at the same score the two differ in
relevance. Labels are what the teacher is for, and it labels candidates, 97% unjudged; where a
pair is judged its human grade is used instead. So dev ECE over judged pairs rises (0.015 ->
0.38 for stage 1 at rho = 0.5) and the teacher's predicted grades on judged pairs shift towards 0:
the cost of calibrating for the population the labels are for. Calibrating on judged status
itself (a judged and an unjudged map) would leak: a feature that says "judged" is not available
for a new query's pairs.

Beyond the fitted range each map is anchored at (0, 0) and (1, 1): deep unjudged candidates may
score below every calibration pair, and a plain isotonic fit would flatten all of them to the
lowest level; the anchors keep their raw order and let a raw probability near 0 stay near 0.

ECE (expected calibration error), the figure the report quotes: over pairs with a human grade,
P(relevant) = P(grade >= 2) against the 0/1 outcome "human relevance >= 2", in 10 equal-width bins
of the predicted probability, ECE = sum over bins of (pairs in bin / all pairs) x |mean predicted -
observed rate|. `top_label_ece` is the same on the confidence (largest grade probability) against
"the most probable grade is the human grade". `agreement` compares the teacher's grades with the
human ones the way the ordinal-labelling literature does (exact and within-one agreement,
quadratic-weighted kappa of the most probable grade); `relevance_summary` is the figure the flaw
above was stated in (share of pairs with P(relevant) >= 0.5, mean P(relevant)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.atomic import atomic_path
from pipelines.retrieval.fusion import ABSENT
from pipelines.teacher.grades import GRADES, RELEVANT_GRADE, cumulative, from_cumulative, p_relevant
from pipelines.text import normalize_query

CALIB_PERCENT = 20
BINS = 10
SAMPLES = ("judged", "weighted", "candidates")
RANKS = ("rank_bm25", "rank_dense", "rank_char")
SELECTION_COLUMNS = (*RANKS, "fusion_score", "agreement")  # the prior's columns the propensity reads


@dataclass
class CalibrationConfig:
    """Which calib-query pairs the calibrators are fitted on (module docstring). Only `candidates`
    (how many unjudged candidates get predicted) changes the fitted teacher's rows; the rest is
    re-applied to the saved calibration predictions on every run, like the cascade's settings."""

    sample: str = field(default="candidates", metadata={"help": "judged | weighted | candidates"})
    unjudged_relevance: float = field(default=0.5, metadata={
        "help": "candidates: P(relevant) of an unjudged candidate relative to a judged pair scored the same"})
    max_weight: float = field(default=100.0, metadata={"help": "weighted: clip of 1 / P(judged | x)"})
    candidates: int = field(default=10_000, metadata={
        "help": "unjudged calib-query candidates drawn uniformly and predicted by every stage"})

    def __post_init__(self):
        if self.sample not in SAMPLES:
            raise ValueError(f"calibration sample {self.sample!r}: expected one of {SAMPLES}")


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
        """Maps from raw probabilities to the (weighted) rates of grade >= k."""
        grades = np.asarray(grades)
        return cls.fit_targets(probs, np.column_stack([grades >= k for k in range(1, GRADES)]), weights)

    @classmethod
    def fit_targets(cls, probs: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None) -> GradeCalibrator:
        """Maps from raw probabilities to targets (n, 3) in 0..1 for P(grade >= k): 0/1 outcomes or
        soft ones (isotonic regression fits a weighted mean of either)."""
        cum, targets = cumulative(probs), np.asarray(targets, np.float64)
        return cls([centred_isotonic(cum[:, k], targets[:, k], weights) for k in range(cum.shape[1])])

    def transform(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated (n, 4) probabilities, monotone in each raw cumulative probability."""
        cum = cumulative(probs)
        calibrated = np.column_stack([np.interp(cum[:, k], xs, ys) for k, (xs, ys) in enumerate(self.knots)])
        return from_cumulative(calibrated)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            joblib.dump(self.knots, tmp)
        return path

    @classmethod
    def load(cls, path: Path) -> GradeCalibrator:
        return cls(joblib.load(path))


def selection_features(frame: pd.DataFrame, raw1: np.ndarray) -> np.ndarray:
    """What the propensity model reads: log channel ranks (ABSENT where a channel missed the pair),
    fusion score, agreement, and stage 1's raw cumulative probabilities as logits."""
    ranks = frame[list(RANKS)].fillna(ABSENT).to_numpy(np.float64)
    prior = frame[list(SELECTION_COLUMNS[len(RANKS):])].fillna(0.0).to_numpy(np.float64)
    cum = np.clip(cumulative(raw1), 1e-4, 1 - 1e-4)
    return np.column_stack([np.log(ranks), prior, np.log(cum / (1 - cum))])


def propensity_weights(judged: np.ndarray, unjudged: np.ndarray, mass: float, max_weight: float) -> np.ndarray:
    """Importance weights of the judged pairs, 1 / P(judged | x), clipped at max_weight, mean 1.

    judged, unjudged: selection_features of the judged pairs and of a uniform sample of unjudged
    candidates, each of which stands for `mass` candidates; the logistic regression sees the
    sample with that weight, so its probabilities are P(judged | x) among all candidates."""
    x = np.vstack([judged, unjudged])
    y = np.r_[np.ones(len(judged)), np.zeros(len(unjudged))]
    w = np.r_[np.ones(len(judged)), np.full(len(unjudged), float(mass))]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x, y, logisticregression__sample_weight=w)
    weights = np.minimum(1.0 / np.maximum(model.predict_proba(judged)[:, 1], 1e-12), max_weight)
    return weights / weights.mean()


def fit_calibrator(config: CalibrationConfig, judged: np.ndarray, grades: np.ndarray, unjudged: np.ndarray,
                   mass: float, weights: np.ndarray | None = None) -> GradeCalibrator:
    """One stage's calibrator on config.sample (module docstring).

    judged, unjudged: the stage's raw probabilities on the calib queries' judged pairs and on the
    uniform sample of their unjudged candidates (each standing for `mass` candidates); weights:
    propensity_weights of the judged pairs ("weighted" only)."""
    if config.sample == "judged":
        return GradeCalibrator.fit(judged, grades)
    if config.sample == "weighted":
        return GradeCalibrator.fit(judged, grades, weights)
    judged_map = GradeCalibrator.fit(judged, grades)
    soft = config.unjudged_relevance * cumulative(judged_map.transform(unjudged))
    hard = np.column_stack([np.asarray(grades) >= k for k in range(1, GRADES)])
    return GradeCalibrator.fit_targets(np.vstack([judged, unjudged]), np.vstack([hard, soft]),
                                       np.r_[np.ones(len(judged)), np.full(len(unjudged), float(mass))])


def agreement(grades: np.ndarray, probs: np.ndarray) -> dict:
    """The teacher's grades against human grades: both distributions (the teacher's as the share
    of pairs whose most probable grade is g, and as its mean probability of g), the confusion
    matrix (rows human, columns teacher), exact and within-one agreement and quadratic-weighted
    kappa (Cohen 1968) of the most probable grade."""
    grades, probs = np.asarray(grades), np.asarray(probs, np.float64)
    predicted = probs.argmax(axis=1)
    labels = list(range(GRADES))
    return {"pairs": len(grades),
            "human": (np.bincount(grades, minlength=GRADES) / len(grades)).tolist(),
            "predicted": (np.bincount(predicted, minlength=GRADES) / len(grades)).tolist(),
            "mean_probability": probs.mean(axis=0).tolist(),
            "confusion": confusion_matrix(grades, predicted, labels=labels).tolist(),
            "exact": float(np.mean(predicted == grades)),
            "within_one": float(np.mean(np.abs(predicted - grades) <= 1)),
            "qwk": float(cohen_kappa_score(grades, predicted, labels=labels, weights="quadratic"))}


def relevance_summary(probs: np.ndarray) -> dict:
    """Pairs, the share with P(grade >= 2) >= 0.5 and the mean P(grade >= 2)."""
    p = p_relevant(probs)
    return {"pairs": len(p), "share_p_relevant>=0.5": float(np.mean(p >= 0.5)) if len(p) else float("nan"),
            "mean_p_relevant": float(p.mean()) if len(p) else float("nan")}


def binned_ece(predicted: np.ndarray, outcome: np.ndarray, bins: int = BINS,
               weights: np.ndarray | None = None) -> float:
    """Equal-width-bin ECE of probabilities `predicted` against `outcome`: 0/1 labels, or observed
    rates with `weights` their trials (impressions). Per bin |weighted mean predicted - weighted mean
    outcome|, weighted by the bin's share of the weight; NaN when there is none."""
    predicted, outcome = np.asarray(predicted, np.float64), np.asarray(outcome, np.float64)
    weights = np.ones_like(predicted) if weights is None else np.asarray(weights, np.float64)
    if weights.sum() <= 0:
        return float("nan")
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        w = np.where(which == b, weights, 0.0)
        total += abs(w @ predicted - w @ np.where(w > 0, outcome, 0.0))  # = bin weight x |mean gap|
    return float(total / weights.sum())


def ece(probs: np.ndarray, grades: np.ndarray, bins: int = BINS) -> float:
    """ECE of P(grade >= 2) against human relevance >= 2 (see the module docstring)."""
    return binned_ece(p_relevant(probs), np.asarray(grades) >= RELEVANT_GRADE, bins)


def top_label_ece(probs: np.ndarray, grades: np.ndarray, bins: int = BINS) -> float:
    """ECE of the confidence (max probability) against 'the argmax grade is the human grade'."""
    probs = np.asarray(probs)
    return binned_ece(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(grades), bins)
