"""Ordinal grades 0..3 from Home Depot relevance, and the probability algebra every stage shares.

Home Depot relevance is the mean of three (a few pairs: four) raters on 1..3, so it takes the
values 1, 1.25, 1.33, 1.5, 1.67, 1.75, 2, 2.25, 2.33, 2.5, 2.67, 2.75, 3. The mapping (the one place
it is defined):

    relevance      grade  meaning            raters                          share of judgments
    1.00 - 1.33    0      irrelevant         most said 1 ("not relevant")      7%
    1.50 - 1.75    1      partly relevant    mixed, mean below 2               9%
    2.00 - 2.67    2      relevant           mean at least 2                  58%
    2.75 - 3.00    3      exact match        all (or 3 of 4) said 3           26%

Why these edges: grade >= 2 is exactly relevance >= 2, the line the evaluation protocol already
draws (pipelines.metrics.RELEVANT: recall@100, irrelevant@10), and the relevance gate
(pipelines.signals.engagement_stats) asks the teacher for P(grade >= 2), so "relevant" means one
thing in the labels, the gate and the metrics. Grade 3 needs a clear consensus on 3
(2.67 = one rater of three dissented); grade 0 a majority on 1.

Probabilities are (n, 4) arrays p[:, g] = P(grade = g). Cumulative form c[:, k-1] = P(grade >= k),
k = 1..3, is what ordinal heads output and what calibration works on (calibrate.py).
"""

from __future__ import annotations

import numpy as np

GRADES = 4
EDGES = (1.5, 2.0, 2.75)  # relevance at or above EDGES[k-1] has grade >= k
RELEVANT_GRADE = 2  # grade >= this <=> relevance >= 2.0 (metrics.RELEVANT)
_TOL = 0.02  # relevance is stored rounded to 2 decimals (1.67 for 5/3): compare with slack


def to_grade(relevance) -> np.ndarray:
    """Grades 0..3 (int64) for relevance values 1..3; raises on values outside 1..3 or NaN."""
    rel = np.asarray(relevance, dtype=np.float64)
    if np.isnan(rel).any() or (rel < 1.0 - _TOL).any() or (rel > 3.0 + _TOL).any():
        raise ValueError("relevance must lie in 1..3 (Home Depot scale) with no missing values")
    return sum((rel >= edge - _TOL).astype(np.int64) for edge in EDGES)


def cumulative(probs: np.ndarray) -> np.ndarray:
    """(n, 4) grade probabilities -> (n, 3) P(grade >= k) for k = 1, 2, 3."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.cumsum(probs[:, ::-1], axis=1)[:, ::-1][:, 1:]


def from_cumulative(cum: np.ndarray) -> np.ndarray:
    """(n, 3) P(grade >= k) -> (n, 4) probabilities, forcing 1 >= c1 >= c2 >= c3 >= 0 first so that
    every probability is non-negative and the row sums to 1."""
    cum = np.clip(np.asarray(cum, dtype=np.float64), 0.0, 1.0)
    cum = np.minimum.accumulate(cum, axis=1)  # c2 <= c1, c3 <= c2
    upper = np.concatenate([np.ones((len(cum), 1)), cum], axis=1)  # P(grade >= 0..3)
    lower = np.concatenate([cum, np.zeros((len(cum), 1))], axis=1)  # P(grade >= 1..4)
    return upper - lower


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """Sum of grade x probability, 0..3."""
    return np.asarray(probs, dtype=np.float64) @ np.arange(GRADES, dtype=np.float64)


def confidence(probs: np.ndarray) -> np.ndarray:
    """The teacher's confidence in its own label: the largest grade probability."""
    return np.asarray(probs, dtype=np.float64).max(axis=1)


def p_relevant(probs: np.ndarray) -> np.ndarray:
    """P(grade >= RELEVANT_GRADE) = P(relevance >= 2)."""
    return np.asarray(probs, dtype=np.float64)[:, RELEVANT_GRADE:].sum(axis=1)


def blend(p: np.ndarray, q: np.ndarray, weight_q: float) -> np.ndarray:
    """Logit-linear pool of two grade distributions, per cumulative probability:
    logit P(grade >= k) = (1 - w) logit p_k + w logit q_k (a weighted product of experts)."""
    eps = 1e-6
    lp, lq = (np.log(c / (1 - c)) for c in (np.clip(cumulative(x), eps, 1 - eps) for x in (p, q)))
    return from_cumulative(1.0 / (1.0 + np.exp(-((1.0 - weight_q) * lp + weight_q * lq))))
