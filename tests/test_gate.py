"""The relevance gate: the one definition Feast runs offline and online."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from pipelines.signals.engagement_stats import RELEVANT_PROBABILITY, gated_engagement

maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731 - a null or a value
row = st.tuples(maybe(st.floats(0, 0.5)), maybe(st.floats(0, 0.5)), maybe(st.integers(0, 1000)),
                maybe(st.integers(0, 100)), maybe(st.floats(0, 1)))


@given(st.lists(row, min_size=1, max_size=30))
def test_gate_keeps_engagement_only_on_relevant_pairs(rows):
    df = pd.DataFrame(rows, columns=["grade_p2", "grade_p3", "clicks_30d", "orders_30d", "ctr_debiased_30d"])
    out = gated_engagement(df)
    assert list(out.columns) == ["is_relevant", "gated_clicks_30d", "gated_orders_30d", "gated_ctr_30d"]
    for (p2, p3, clicks, orders, ctr), got in zip(rows, out.itertuples(index=False)):
        labelled = p2 is not None and p3 is not None
        relevant = labelled and p2 + p3 >= RELEVANT_PROBABILITY
        if not labelled:  # unknown relevance stays unknown: nothing reads as "judged irrelevant"
            assert math.isnan(got.is_relevant)
            assert all(math.isnan(v) for v in (got.gated_clicks_30d, got.gated_orders_30d, got.gated_ctr_30d))
            continue
        assert got.is_relevant == int(relevant)
        for raw, gated in ((clicks, got.gated_clicks_30d), (orders, got.gated_orders_30d),
                           (ctr, got.gated_ctr_30d)):
            if raw is None:
                assert math.isnan(gated)          # no engagement data stays null
            elif relevant:
                assert gated == float(pd.Series([raw], dtype="float32")[0])
            else:
                assert gated == 0.0               # gated out
