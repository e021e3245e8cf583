"""The relevance gate: engagement counts only where the teacher says the item is relevant.

This is the one definition. The `gated_engagement` on-demand feature view points at
`gated_engagement` below, so Feast runs it for training sets and online reads alike, and any
other reader calls the same function.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RELEVANT_GRADE = 1.5  # teacher expected grade (0..3) at or above which a pair counts as relevant

GATED_OUTPUTS = ("is_relevant", "gated_clicks_30d", "gated_orders_30d", "gated_ctr_30d")


def gated_engagement(inputs: pd.DataFrame) -> pd.DataFrame:
    """Keep 30-day clicks, orders and debiased CTR where expected_grade >= RELEVANT_GRADE.

    A pair without a teacher label is not relevant (its engagement is zeroed); a pair without
    engagement keeps null engagement, so "no data" stays distinguishable from "gated out".
    Plain numpy: it runs inside every online lookup."""
    grade = inputs["expected_grade"].to_numpy(dtype="float64", na_value=np.nan)
    relevant = grade >= RELEVANT_GRADE  # NaN compares False: unlabelled pairs are not relevant
    out = {"is_relevant": relevant.astype("int64")}
    for src, dst in (("clicks_30d", "gated_clicks_30d"), ("orders_30d", "gated_orders_30d"),
                     ("ctr_debiased_30d", "gated_ctr_30d")):
        value = inputs[src].to_numpy(dtype="float64", na_value=np.nan)
        out[dst] = np.where(relevant | np.isnan(value), value, 0.0).astype("float32")
    return pd.DataFrame(out, index=inputs.index)
