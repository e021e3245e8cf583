"""Item and query profiles: read straight from the lake, no model involved."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.signals.spec import SignalContext
from pipelines.simulation import ClickConfig, query_frequency


def item_profile(ctx: SignalContext) -> pd.DataFrame:
    """Title, its length, and popularity = the item's share of judged pairs (a traffic proxy)."""
    items = ctx.lake.read("items")
    judged = ctx.lake.read("judgments").groupby("item_id").size()
    counts = items["item_id"].map(judged).fillna(0).to_numpy(dtype="float64")
    return pd.DataFrame({
        "item_id": items["item_id"],
        "event_timestamp": items["event_timestamp"],
        "created_timestamp": items["event_timestamp"],
        "title": items["title"],
        "title_tokens": items["title"].str.split().str.len().astype("int64"),
        "popularity": (counts / max(counts.sum(), 1.0)).astype("float32"),
    })


def traffic_frequency(queries: pd.DataFrame, seed: int = 0) -> pd.Series:
    """Searches per query: the lake's figure where it has one, else the click simulator's seeded draw.

    Home Depot has no traffic, so the engagement producer simulates it (pipelines.simulation); the
    query profile and the evaluation's frequency buckets read the same draw, so "head" means the
    queries that carried the most simulated searches, train and dev alike."""
    drawn = query_frequency(queries, ClickConfig(), seed)
    return pd.Series(np.rint(drawn), index=queries.index).astype("Int64")


def frequency_bucket(frequency: pd.Series) -> pd.Series:
    """head = queries carrying the top half of traffic, torso = the next 30%, tail = the rest;
    'unknown' where a query has no frequency."""
    freq = frequency.astype("float64")
    order = freq.fillna(0).sort_values(ascending=False, kind="stable")
    before = (order.cumsum() - order) / max(order.sum(), 1.0)  # traffic share of busier queries
    bucket = pd.Series(np.where(before < 0.5, "head", np.where(before < 0.8, "torso", "tail")),
                       index=order.index).reindex(freq.index)
    return bucket.where(freq.notna(), "unknown")


def query_profile(ctx: SignalContext) -> pd.DataFrame:
    queries = ctx.lake.read("queries")
    frequency = traffic_frequency(queries, ctx.seed)
    return pd.DataFrame({
        "query_id": queries["query_id"],
        "event_timestamp": queries["event_timestamp"],
        "created_timestamp": queries["event_timestamp"],
        "query_text": queries["query_text"],
        "query_tokens": queries["query_norm"].str.split().str.len().astype("int64"),
        "frequency": frequency,
        "frequency_bucket": frequency_bucket(frequency),
    })
