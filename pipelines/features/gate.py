"""The relevance gate: engagement counts only where the teacher says the item is relevant.

This is the one definition. The `gated_engagement` on-demand feature view points at
`gated_engagement` below, so Feast runs it for training sets and online reads alike, and any
other reader calls the same function.

"Relevant" means what the metrics mean by it (human relevance >= 2, i.e. teacher grade 2 or 3),
and the gate asks the calibrated teacher exactly that: P(grade >= 2) = grade_p2 + grade_p3 >= 0.5.
An earlier rule, expected grade >= 1.5, let most judged-irrelevant pairs through on Home Depot:
the expected grade of an unsure pair sits in the middle of the scale, while its P(relevant) does not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RELEVANT_PROBABILITY = 0.5  # teacher P(grade >= 2) at or above which a pair counts as relevant
GATE_INPUTS = ("grade_p2", "grade_p3")  # the teacher_labels features the gate reads

GATED_OUTPUTS = ("is_relevant", "gated_clicks_30d", "gated_orders_30d", "gated_ctr_30d")


def gated_engagement(inputs: pd.DataFrame) -> pd.DataFrame:
    """Keep 30-day clicks, orders and debiased CTR where grade_p2 + grade_p3 >= RELEVANT_PROBABILITY.

    A pair without a teacher label is not relevant (its engagement is zeroed); a pair without
    engagement keeps null engagement, so "no data" stays distinguishable from "gated out".
    Plain numpy: it runs inside every online lookup."""
    p_relevant = sum(inputs[c].to_numpy(dtype="float64", na_value=np.nan) for c in GATE_INPUTS)
    relevant = p_relevant >= RELEVANT_PROBABILITY  # NaN compares False: unlabelled pairs are not relevant
    out = {"is_relevant": relevant.astype("int64")}
    for src, dst in (("clicks_30d", "gated_clicks_30d"), ("orders_30d", "gated_orders_30d"),
                     ("ctr_debiased_30d", "gated_ctr_30d")):
        value = inputs[src].to_numpy(dtype="float64", na_value=np.nan)
        out[dst] = np.where(relevant | np.isnan(value), value, 0.0).astype("float32")
    return pd.DataFrame(out, index=inputs.index)
