"""The relevance gate: engagement counts only where the teacher says the item is relevant.

This is the one definition. The `gated_engagement` on-demand feature view points at
`gated_engagement` below, so Feast runs it for training sets and online reads alike, and any
other reader calls the same function.

"Relevant" means what the metrics mean by it (human relevance >= 2, i.e. teacher grade 2 or 3),
and the gate asks the calibrated teacher exactly that: P(grade >= 2) = grade_p2 + grade_p3.
The threshold is not 0.5: 84% of Home Depot's judged pairs are relevant, so a calibrated
P(relevant) sits above 0.5 for almost every judged pair, irrelevant ones included. Measured on
the training queries' 47,263 judged pairs (teacher v2, 2026-11-27), the share of pairs passing:

    rule                     judged relevant   judged irrelevant   all 1.5M candidates
    P(relevant) >= 0.5             100.0%             99.9%               93.2%
    expected grade >= 1.5           99.9%             99.3%               80.0%
    P(relevant) >= 0.7              85.4%             44.3%               28.4%
    expected grade >= 2.0           54.7%             13.2%               11.0%

0.7 keeps most relevant engagement and removes over half of it on irrelevant pairs (Youden's
J 0.41, the best of these with expected grade >= 2.0, which drops half the relevant clicks).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RELEVANT_PROBABILITY = 0.7  # teacher P(grade >= 2) at or above which a pair counts as relevant
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
