"""The metric definitions against values computed by hand (DESIGN.md "Evaluation protocol")."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.metrics import METRICS, evaluate, ranked


def judgments(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["query_id", "item_id", "relevance"])


def linear_ndcg(top: list[str], rel: dict[str, float], k: int) -> float:
    """Reference NDCG: gain = relevance - 1, log2(rank + 1) discount, ideal from the judged items."""
    dcg = sum((rel.get(item, 1.0) - 1.0) / math.log2(i + 2) for i, item in enumerate(top[:k]))
    ideal = sorted((r - 1.0 for r in rel.values()), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


# q1: judged a..e with thirds and a quarter; the run interleaves unjudged items x, y.
Q1 = {"a": 3.0, "b": 2.33, "c": 1.0, "d": 1.75, "e": 2.67}
RUN_Q1 = {"b": 0.9, "x": 0.8, "c": 0.7, "a": 0.6, "y": 0.5, "d": 0.4}  # e is never retrieved


def test_ndcg_is_linear_gain_and_matches_hand_computation():
    result = evaluate({"q1": RUN_Q1}, judgments([("q1", i, r) for i, r in Q1.items()]))["per_query"]["q1"]
    top = ["b", "x", "c", "a", "y", "d"]
    # by hand: DCG = 1.33/1 + 0/log2 3 + 0/2 + 2/log2 5 + 0 + 0.75/log2 7
    dcg = 1.33 + 2.0 / math.log2(5) + 0.75 / math.log2(7)
    idcg = 2.0 + 1.67 / math.log2(3) + 1.33 / 2.0 + 0.75 / math.log2(5) + 0.0
    assert result["ndcg@10"] == pytest.approx(dcg / idcg, abs=2e-3)  # thirds are rounded to 1/12
    assert result["ndcg@10"] == pytest.approx(linear_ndcg(top, Q1, 10), abs=2e-3)
    assert result["ndcg@25"] == pytest.approx(result["ndcg@10"])
    # exponential gain (2^g - 1) would give a different number: the test would catch the wrong variant
    exp_dcg = (2**1.33 - 1) + (2**2 - 1) / math.log2(5) + (2**0.75 - 1) / math.log2(7)
    assert abs(result["ndcg@10"] - exp_dcg / (3 + (2**1.67 - 1) / math.log2(3) + (2**1.33 - 1) / 2
                                              + (2**0.75 - 1) / math.log2(5))) > 0.01


def test_exact_gains_for_thirds_and_quarters():
    rel = {"a": 2.0 + 1 / 3, "b": 1.75, "c": 2.5}
    run = {"q": {"b": 3.0, "c": 2.0, "a": 1.0}}
    got = evaluate(run, judgments([("q", i, r) for i, r in rel.items()]))["per_query"]["q"]["ndcg@10"]
    assert got == pytest.approx(linear_ndcg(["b", "c", "a"], rel, 10), abs=1e-12)


def test_condensed_ndcg_drops_unjudged_items_then_scores_as_ndcg_by_hand():
    """Sakai 2007: the top 100 with unjudged items removed, then the same NDCG@10 (gains in quarters: exact)."""
    rel = {"a": 3.0, "b": 2.5, "c": 1.0, "d": 1.75}  # gains 2, 1.5, 0, 0.75
    run = {"q": {"u1": 9.0, "b": 8.0, "u2": 7.0, "c": 6.0, "a": 5.0, "u3": 4.0, "d": 3.0}}
    got = evaluate(run, judgments([("q", i, r) for i, r in rel.items()]))["per_query"]["q"]
    idcg = 2.0 / 1 + 1.5 / math.log2(3) + 0.75 / math.log2(4) + 0.0  # a b d c
    # full list u1 b u2 c a u3 d: ranks 2, 4, 5, 7 hold the judged items
    full = 0.0 + 1.5 / math.log2(3) + 0.0 + 0.0 / math.log2(5) + 2.0 / math.log2(6) + 0.0 + 0.75 / math.log2(8)
    # condensed list b c a d: ranks 1..4
    condensed = 1.5 / 1 + 0.0 / math.log2(3) + 2.0 / math.log2(4) + 0.75 / math.log2(5)
    assert got["ndcg@10"] == pytest.approx(full / idcg, abs=1e-12)
    assert got["ndcg@10_condensed"] == pytest.approx(condensed / idcg, abs=1e-12)
    assert list(METRICS[:2]) == ["ndcg@10", "ndcg@10_condensed"]


def test_condensed_list_is_cut_from_the_top_100():
    """Judged items below rank 10 move up into the top 10; below rank 100 they were never retrieved."""
    unjudged = {f"u{i:03d}": 1.0 - i / 1000 for i in range(100)}
    rows = judgments([("near", "a", 3.0), ("far", "a", 3.0)])
    out = evaluate({"near": {**dict(list(unjudged.items())[:12]), "a": 0.5}, "far": {**unjudged, "a": 0.5}}, rows)
    near, far = out["per_query"]["near"], out["per_query"]["far"]
    assert near["ndcg@10"] == 0.0 and near["ndcg@10_condensed"] == 1.0  # rank 13 -> rank 1
    assert far["ndcg@25"] == 0.0 and far["ndcg@10_condensed"] == 0.0  # rank 101: outside the scored run
    none_judged = evaluate({"q": {"x": 1.0}}, judgments([("q", "a", 3.0)]))["per_query"]["q"]
    assert none_judged["ndcg@10_condensed"] == 0.0  # condensed to an empty list


def test_recall_counts_relevance_at_least_two_within_depth_100():
    rel = {"a": 2.0, "b": 1.75, "c": 3.0, "d": 2.25}
    run = {"q": {"a": 1.0, "b": 0.9, **{f"u{i:03d}": 0.5 for i in range(98)}, "c": 0.1, "d": 0.05}}
    got = evaluate(run, judgments([("q", i, r) for i, r in rel.items()]))["per_query"]["q"]
    assert got["recall@100"] == pytest.approx(1 / 3)  # a found; c and d below rank 100; b is not relevant


def test_top10_metrics_by_hand():
    rel = {"a": 3.0, "b": 1.0, "c": 1.67, "d": 2.0, "z": 1.0}
    run = {"q": {"a": 10, "x": 9, "b": 8, "c": 7, "y": 6, "d": 5, "z": 0.1,
                 **{f"u{i}": 1.0 for i in range(5)}}}  # z is at rank 12: outside the top 10
    got = evaluate(run, judgments([("q", i, r) for i, r in rel.items()]))["per_query"]["q"]
    assert got["irrelevant@10"] == pytest.approx(2 / 10)  # b (1.0) and c (1.67); unjudged x, y don't count
    assert got["coverage@10"] == pytest.approx(4 / 10)  # a, b, c, d
    assert got["mean_relevance@10"] == pytest.approx((3.0 + 1.0 + 1.67 + 2.0) / 4)


def test_undefined_queries_are_nan_and_left_out_of_means():
    rows = [("all_bad", "a", 1.0), ("all_bad", "b", 1.33), ("good", "c", 3.0)]
    out = evaluate({"all_bad": {"a": 1.0}, "good": {"c": 1.0}, "unjudged": {"c": 1.0}}, judgments(rows))
    bad = out["per_query"]["all_bad"]
    assert math.isnan(bad["recall@100"]) and not math.isnan(bad["ndcg@10"])  # 1.33 has gain > 0
    assert bad["irrelevant@10"] == pytest.approx(0.1)
    assert out["queries"] == 2 and "unjudged" not in out["per_query"]
    assert out["count"]["recall@100"] == 1 and out["mean"]["recall@100"] == 1.0
    only_ones = evaluate({"q": {"a": 1.0}}, judgments([("q", "a", 1.0)]))
    assert math.isnan(only_ones["per_query"]["q"]["ndcg@10"]) and only_ones["count"]["ndcg@10"] == 0
    assert math.isnan(only_ones["per_query"]["q"]["ndcg@10_condensed"]) and only_ones["count"]["ndcg@10_condensed"] == 0


def test_missing_run_counts_as_empty_and_ties_break_by_item_id():
    rows = [("q", "b", 3.0), ("q", "a", 1.0), ("missing", "a", 3.0)]
    out = evaluate({"q": {"b": 1.0, "a": 1.0}}, judgments(rows))
    assert ranked({"b": 1.0, "a": 1.0}) == ["a", "b"]
    assert out["per_query"]["q"]["ndcg@10"] == pytest.approx(1 / math.log2(3))  # a (gain 0) ranks first
    missing = out["per_query"]["missing"]
    assert missing["ndcg@10"] == 0.0 and missing["recall@100"] == 0.0 and missing["coverage@10"] == 0.0
    assert set(out["mean"]) == set(METRICS)
    assert np.isclose(out["mean"]["ndcg@10"], (1 / math.log2(3) + 0.0) / 2)


def test_a_run_that_found_nothing_for_any_query_scores_zero():
    """Every list empty (a query set no channel matches): ranx cannot take such a run; the metrics are 0."""
    out = evaluate({"q": {}}, judgments([("q", "a", 3.0), ("r", "b", 2.0)]))
    assert out["mean"]["ndcg@10"] == 0.0 and out["mean"]["recall@100"] == 0.0 and out["queries"] == 2
    assert out["mean"]["ndcg@10_condensed"] == 0.0
    assert out["mean"]["irrelevant@10"] == 0.0 and math.isnan(out["mean"]["mean_relevance@10"])
