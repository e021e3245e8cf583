"""The item_profile signal: catalog attributes of an item, read straight from the lake."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
from feast import FeatureView, Field
from feast.types import Float32, Int64, String

from pipelines.signals.entities import item
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source
from pipelines.signals.training import training_judgments

# Item attributes used by every reader (titles for display, popularity as a prior).
item_profile_fv = FeatureView(
    name="item_profile",
    entities=[item],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="title", dtype=String, description="Title in the catalog"),
        Field(name="title_tokens", dtype=Int64, description="Words in the title", tags=bounds(0)),
        Field(name="popularity", dtype=Float32,
              description="Share of the training split's judged pairs that hold the item",
              tags=bounds(0, 1)),
    ],
    source=signal_source("item_profile"),
    description="An item's catalog attributes: title, its length, and popularity among the training judgments.",
    tags={"grain": "item"},
)


def popularity_judgments(ctx: SignalContext) -> pd.DataFrame:
    """The judged pairs `popularity` counts: the training split's judgments of catalog items (dev
    judgments are never read). The ranker's trainer reads them too, to take each training query's
    own judgments out of its rows' popularity (pipelines.ranking.data)."""
    judged = training_judgments(ctx, ctx.lake.read("queries"))
    return judged[judged["item_id"].isin(ctx.lake.read("items")["item_id"])]


def item_profile(ctx: SignalContext) -> pd.DataFrame:
    """Title, its length, and popularity = the item's share of the training split's judged pairs (a
    traffic proxy)."""
    items = ctx.lake.read("items")
    judged = popularity_judgments(ctx).groupby("item_id").size()
    counts = items["item_id"].map(judged).fillna(0).to_numpy(dtype="float64")
    return pd.DataFrame({
        "item_id": items["item_id"],
        "event_timestamp": items["event_timestamp"],
        "created_timestamp": items["event_timestamp"],
        "title": items["title"],
        "title_tokens": items["title"].str.split().str.len().astype("int64"),
        "popularity": (counts / max(counts.sum(), 1.0)).astype("float32"),
    })


SIGNAL = Signal(item_profile_fv, producer=item_profile, online_features=("title", "popularity"),
                ranker_features=("title_tokens", "popularity"))
