"""The user_brand signal: how much a simulated user engages with a brand, over 30 days.

Home Depot titles lead with the brand, and simulated users favour a few brands
(pipelines.simulation.users), so a user's recent clicks on an item's brand predict the next click
beyond the pair's and the user's own rates. Keyed by (user_id, brand), brand = the title's first
word (pipelines.simulation.users.brand_of), which /search computes for its candidates from the
catalog, so the view is read in the same online lookup as the rest. Rows are written for brands the
user clicked, on the days the 30-day window changes (user_stats explains the stamps): an unclicked
brand has no row and reads null, which the engagement models read as "no affinity seen".
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from feast import Entity, FeatureView, Field, ValueType
from feast.types import Int64

from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source, table_columns
from pipelines.signals.user_stats import LONG, impression_log, stamps, user, user_config, window_changes

# An item's brand: the first word of its title, lower-cased (pipelines.simulation.users.brand_of).
brand = Entity(name="brand", join_keys=["brand"], value_type=ValueType.STRING,
               description="A brand: the first word of an item's title, lower-cased (simulation.users.brand_of).")

user_brand_fv = FeatureView(
    name="user_brand",
    entities=[user, brand],
    ttl=timedelta(days=3650),  # a row holds until the next; a window emptying writes its own zero row
    schema=[
        Field(name="brand_clicks_30d", dtype=Int64, description="The user's clicks on the brand, 30 days",
              tags=bounds(0)),
        Field(name="brand_orders_30d", dtype=Int64, description="The user's orders of the brand, 30 days",
              tags=bounds(0)),
    ],
    source=signal_source("user_brand"),
    description="A simulated user's clicks and orders on a brand over the trailing 30 days, as of each day's end.",
    tags={"signal": "engagement", "grain": "user x brand"},
)


def user_brand(ctx: SignalContext) -> pd.DataFrame:
    """30-day clicks and orders per (user, clicked brand), on the days they change."""
    return user_brand_table(impression_log(ctx), pd.Timestamp(ctx.as_of), user_config(ctx).days)


def user_brand_table(log: pd.DataFrame, as_of: pd.Timestamp, days: int) -> pd.DataFrame:
    """The user_brand table of an impression log (user_id, brand, day, click, order)."""
    clicked = log[log["click"] > 0]
    events = pd.DataFrame({"user_id": clicked["user_id"], "brand": clicked["brand"], "day": clicked["day"],
                           "clicks": clicked["click"].astype(np.int64), "orders": clicked["order"].astype(np.int64)})
    windows = window_changes(events, ["user_id", "brand"], {
        "brand_clicks_30d": ("clicks", LONG), "brand_orders_30d": ("orders", LONG)}, days)
    stamp = stamps(windows["day"], as_of, days)
    out = windows.assign(user_id=windows["user_id"].astype(str), brand=windows["brand"].astype(str),
                         event_timestamp=stamp, created_timestamp=stamp)
    return out[table_columns(user_brand_fv, [user, brand])]


SIGNAL = Signal(user_brand_fv, producer=user_brand, engagement_features=("brand_clicks_30d", "brand_orders_30d"))
