"""The value model: the one function that turns the ranker's outputs into the score a list is sorted by.

    value = E[grade] + click_weight * P(click | examined) + order_weight * P(order | examined)

E[grade] is in 0..3, the probabilities in 0..1; the weights set the trade-off between relevance and
engagement explicitly (the seed's point: one documented, tunable function, not a learned blend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ValueWeights:
    """Engagement weights of the value model; (0, 0) ranks by expected relevance alone."""

    click_weight: float = 0.0
    order_weight: float = 0.0


def value(expected_grade: np.ndarray, p_click: np.ndarray, p_order: np.ndarray, weights: ValueWeights) -> np.ndarray:
    """The score each candidate is ranked by (see the module docstring)."""
    return sum(value_terms(expected_grade, p_click, p_order, weights).values())


def value_terms(expected_grade: np.ndarray, p_click: np.ndarray, p_order: np.ndarray,
                weights: ValueWeights) -> dict[str, np.ndarray]:
    """The value's three additive terms, named: what the inspector shows as a score's decomposition."""
    return {"expected_grade": expected_grade, "click": weights.click_weight * p_click,
            "order": weights.order_weight * p_order}
