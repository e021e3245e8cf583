"""What producers may read of the training split: its queries and their judgments, nothing of dev.

One place for the split rule of every producer (and of examples/signals/), so "no producer reads
dev-split judgments" is a property of two functions rather than of each producer;
tests/test_signals_split.py checks it on every registered producer's output.
Quick mode samples QUICK_QUERIES training queries with the run's seed, identically for every
producer, so quick tables cover the same queries.
"""

from __future__ import annotations

import pandas as pd

from pipelines.signals.spec import SignalContext

QUICK_QUERIES = 300  # training queries sampled in quick mode; the catalog is never sampled


def training_queries(ctx: SignalContext) -> pd.DataFrame:
    """The training split's queries sorted by id (a seeded sample of QUICK_QUERIES in quick mode)."""
    queries = ctx.lake.read("queries")
    train = queries[queries["split"] == "train"].sort_values("query_id").reset_index(drop=True)
    if ctx.quick and len(train) > QUICK_QUERIES:
        train = train.sample(n=QUICK_QUERIES, random_state=ctx.seed).sort_values("query_id")
    return train.reset_index(drop=True)


def training_judgments(ctx: SignalContext, queries: pd.DataFrame) -> pd.DataFrame:
    """Judgments of the given queries that are in the training split (dev rows never leave here)."""
    train_ids = queries.loc[queries["split"] == "train", "query_id"]
    judgments = ctx.lake.read("judgments")
    return judgments.loc[judgments["query_id"].isin(train_ids), ["query_id", "item_id", "relevance"]]
