"""The ranker's network and losses: rank consistency by construction, losses against hand
computation, and the position-based click loss recovering known attractiveness."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ranking.config import RankerTrainConfig
from pipelines.ranking.losses import binomial_event_loss, cumulative_targets, ordinal_loss
from pipelines.ranking.model import (
    GRADES,
    OrdinalHead,
    Ranker,
    RankerConfig,
    engagement_probabilities,
    relevance_probabilities,
)
from pipelines.ranking.train import choose_weights, impression_ece, out_of_query_popularity, relevance_targets
from pipelines.ranking.value import ValueWeights, value
from pipelines.workspace import ConfigError


@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
@settings(max_examples=50, deadline=None)
def test_cumulative_probabilities_never_cross(seed, scale):
    """P(grade >= k) is non-increasing in k for any weights, not only trained ones."""
    torch.manual_seed(seed)
    head = OrdinalHead(8)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * scale)
    cumulative, expected = relevance_probabilities(head(torch.randn(64, 8) * scale))
    assert cumulative.shape == (64, GRADES - 1)
    assert (cumulative[:, 1:] <= cumulative[:, :-1] + 1e-7).all()
    assert torch.allclose(expected, cumulative.sum(-1)) and ((expected >= 0) & (expected <= GRADES - 1)).all()


def test_ordinal_loss_is_the_sum_of_threshold_cross_entropies():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    grade = torch.tensor([2])  # targets 1[2 >= k] for k = 1, 2, 3: 1, 1, 0
    by_hand = math.log(1 + math.exp(-2.0)) + math.log(2.0) + math.log(1 + math.exp(-1.0))
    assert math.isclose(ordinal_loss(logits, cumulative_targets(grade)).item(), by_hand, rel_tol=1e-6)
    weighted = ordinal_loss(torch.cat([logits, logits]), cumulative_targets(torch.tensor([2, 0])),
                            torch.tensor([1.0, 0.0]))
    assert math.isclose(weighted.item(), by_hand, rel_tol=1e-6)  # a zero-weight row counts for nothing


def test_click_loss_learns_attractiveness_not_position():
    """Logged clicks from a position-based model with known examination: the head's
    P(click | examined) comes out as each item's true attractiveness, whatever its position."""
    rng = np.random.default_rng(0)
    attractiveness = np.array([0.1, 0.3, 0.5, 0.7])
    examination = np.array([1.0, 0.6, 0.35, 0.2])
    n = 40_000
    item = rng.integers(0, 4, n)
    position = np.where(item == 3, 3, rng.integers(0, 4, n))  # the best item mostly shown low
    clicks = rng.random(n) < examination[position] * attractiveness[item]
    x = torch.nn.functional.one_hot(torch.as_tensor(item), 4).float()
    model = Ranker(4, RankerConfig(hidden=(16,)))
    model.eval()  # no dropout: a clean estimate
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    exam, event = torch.as_tensor(examination[position]).float(), torch.as_tensor(clicks)
    for _ in range(300):
        optimizer.zero_grad()
        binomial_event_loss(torch.sigmoid(model(x)["click"]), event.float(), torch.ones(n), exam).backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.sigmoid(model(torch.eye(4))["click"]).numpy()
    assert np.abs(learned - attractiveness).max() < 0.05, learned
    naive = np.array([clicks[item == k].mean() for k in range(4)])  # click rate ignoring position
    assert naive[3] < attractiveness[3] - 0.4  # what a position-blind model would have learned


def test_value_is_the_documented_sum():
    out = value(np.array([2.0, 1.0]), np.array([0.5, 0.1]), np.array([0.1, 0.0]), ValueWeights(2.0, 10.0))
    assert out.tolist() == [2.0 + 1.0 + 1.0, 1.0 + 0.2]


def test_order_probability_never_exceeds_click_probability():
    """P(order | examined) = P(click | examined) x P(order | click), for any inputs and weights."""
    torch.manual_seed(0)
    model = Ranker(6, RankerConfig(hidden=(8,)))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # extreme weights: saturated heads
        p_click, p_order = engagement_probabilities(model(torch.randn(256, 6) * 10))
    assert ((p_order <= p_click) & (p_order >= 0) & (p_click <= 1)).all()


def test_relevance_targets_human_first_then_teacher_then_nothing():
    rows = pd.DataFrame({"grade": [2.0, np.nan, np.nan],
                         "grade_p0": [0.1, 0.1, np.nan], "grade_p1": [0.2, 0.2, np.nan],
                         "grade_p2": [0.3, 0.3, np.nan], "grade_p3": [0.4, 0.4, np.nan]})
    targets, weights = relevance_targets(rows, RankerTrainConfig(teacher_weight=0.5, unjudged="teacher"))
    assert targets[0].tolist() == [1.0, 1.0, 0.0]  # human grade 2: 1[2 >= k]
    assert np.allclose(targets[1], [0.9, 0.7, 0.4])  # teacher: P(grade >= k) from its distribution
    assert weights.tolist() == [1.0, 0.5, 0.0]
    targets, weights = relevance_targets(rows, RankerTrainConfig(teacher_weight=0.5, unjudged="zero"))
    assert targets[0].tolist() == [1.0, 1.0, 0.0]  # the human grade still wins
    assert targets[1].tolist() == [0.0, 0.0, 0.0]  # unjudged: grade 0 whatever the teacher says
    assert weights.tolist() == [1.0, 0.5, 0.0]  # a row the teacher never labelled still trains nothing
    with pytest.raises(ConfigError, match="unjudged label 'human': expected one of zero | teacher"):
        RankerTrainConfig(unjudged="human")


def test_out_of_query_popularity_takes_the_rows_own_judgments_out():
    """4 judged pairs in all: item a judged for q1 and q2, item b for q1 only, item c for q3."""
    rows = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q9", "q9"], "item_id": ["a", "b", "a", "b", "z"],
                         "popularity": np.array([2 / 4, 1 / 4, 2 / 4, 1 / 4, np.nan], np.float32),
                         "popularity_own_judgments": [1, 1, 1, 0, 0], "popularity_judgments": 4})
    out = out_of_query_popularity(rows)
    assert out["popularity"].iloc[:4].tolist() == [1 / 4, 0.0, 1 / 4, 1 / 4]  # exactly 0: no other query judged b
    assert np.isnan(out["popularity"].iloc[4])  # unknown stays unknown


def test_value_weights_are_the_largest_engagement_within_tolerance():
    grid = [{"click_weight": w, "order_weight": 2 * w, "calib_ndcg@10": n}
            for w, n in ((0.0, 0.500), (0.5, 0.497), (1.0, 0.494), (2.0, 0.30))]
    assert choose_weights(grid, tolerance=0.01) == ValueWeights(0.5, 1.0)  # 0.494 < 0.500 * 0.99
    assert choose_weights(grid, tolerance=0.0) == ValueWeights(0.0, 0.0)


def test_impression_ece_by_hand():
    pred = np.array([0.05, 0.05, 0.55])  # bins 0, 0, 5
    events, trials = np.array([1.0, 0.0, 3.0]), np.array([10.0, 10.0, 5.0])
    # bin 0: 20 impressions, mean predicted 0.05, observed 1/20; bin 5: 5 impressions, 0.55 vs 0.6
    assert impression_ece(pred, events, trials) == pytest.approx(20 / 25 * 0.0 + 5 / 25 * 0.05)
