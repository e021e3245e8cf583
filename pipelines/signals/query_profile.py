"""The query_profile signal: attributes of a query, and the traffic that decides its frequency bucket."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from feast import FeatureView, Field
from feast.types import Int64, String

from pipelines.signals.entities import query
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source
from pipelines.simulation import ClickConfig, query_frequency

# Query attributes (traffic decides head/torso/tail buckets in evaluation).
query_profile_fv = FeatureView(
    name="query_profile",
    entities=[query],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="query_text", dtype=String, description="Query text as first seen"),
        Field(name="query_tokens", dtype=Int64, description="Words in the normalized query", tags=bounds(0)),
        Field(name="frequency", dtype=Int64, description="Searches per day (simulated where the data has none)",
              tags=bounds(0)),
        Field(name="frequency_bucket", dtype=String,
              description="head (top half of traffic), torso (next 30%) or tail"),
    ],
    source=signal_source("query_profile"),
    description="A query's attributes: text, length, traffic and traffic bucket (evaluation reports by bucket).",
    tags={"grain": "query"},
)


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
    """Text, token count, traffic and frequency bucket of every query in the lake."""
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


SIGNAL = Signal(query_profile_fv, producer=query_profile, online_features=("frequency",),
                ranker_features=("query_tokens", "frequency"))
