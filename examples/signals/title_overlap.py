"""Worked example of a new signal: lexical overlap between a query and an item's title.

A platform team adds it with this one file, copied next to feature_repo/signals.py, and one
registration line in that file:

    from title_overlap import SIGNAL as title_overlap

`unisup apply`, `signals build`, `materialize`, `dataset build` and both FeatureServices then
include it. tests/test_new_signal.py runs exactly these steps.
"""

from datetime import timedelta

import pandas as pd
from feast import FeatureView, Field
from feast.types import Float32, Int64

from pipelines.signals.entities import PAIR
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source
from pipelines.signals.training import training_judgments, training_queries
from pipelines.text import normalize_query

# Share of query tokens found in the title, per judged (query, item) pair of training queries.
# tags=bounds(lo, hi) declares a number's valid range: `signals build` refuses a table outside it.
title_overlap_fv = FeatureView(
    name="title_overlap",
    entities=PAIR,
    ttl=timedelta(days=365),
    schema=[
        Field(name="overlap_ratio", dtype=Float32, description="Share of the query's words found in the title",
              tags=bounds(0, 1)),
        Field(name="title_has_query", dtype=Int64,
              description="1 if the whole normalized query occurs in the title, else 0",
              tags=bounds(0, 1)),
    ],
    source=signal_source("title_overlap"),
    description="Example signal: lexical overlap between a judged query and the item's title.",
    tags={"signal": "example", "grain": "pair"},
)


def produce(ctx: SignalContext) -> pd.DataFrame:
    """One row per judged pair of a training query, stamped at the run's as-of time."""
    queries = training_queries(ctx)
    pairs = training_judgments(ctx, queries)
    titles = ctx.lake.read("items").set_index("item_id")["title"].map(normalize_query)
    q = pairs["query_id"].map(queries.set_index("query_id")["query_norm"])
    t = pairs["item_id"].map(titles).fillna("")
    ratio = [len(set(a.split()) & set(b.split())) / max(len(a.split()), 1) for a, b in zip(q, t)]
    return pd.DataFrame({
        "query_id": pairs["query_id"], "item_id": pairs["item_id"],
        "event_timestamp": ctx.as_of, "created_timestamp": ctx.as_of,
        "overlap_ratio": pd.Series(ratio, index=pairs.index, dtype="float32"),
        "title_has_query": [int(a in b) for a, b in zip(q, t)],
    })


SIGNAL = Signal(title_overlap_fv, producer=produce, online_features=("overlap_ratio",))
