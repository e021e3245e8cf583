"""The user_stats signal: a simulated user's impressions, clicks and orders over 7 and 30 days.

Users exist only in simulated traffic (pipelines.simulation.users): BM25, the "current production"
ranker, shown to a seeded population on the training split's queries over UserConfig.days days
ending at ctx.as_of, with true grades from those queries' judgments only (as engagement_stats).
`impression_log` is that log, cached per settings; the user views aggregate it and the pCTR / pCVR
models (pipelines.engagement) train on it.

Rows are daily snapshots stamped at the end of their day, written on the days a window changes (an
event enters or leaves it): a point-in-time join picks the newest row before an event, which equals
the snapshot of the day before, so an impression never sees its own day's traffic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import Entity, FeatureView, Field, ValueType
from feast.types import Float32, Int64

from pipelines.atomic import write_parquet
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source, table_columns
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import BM25Ranker
from pipelines.simulation.users import UserConfig, item_attributes, simulate_users

SHORT, LONG = 7, 30  # window lengths in days
CTR_PRIOR = (0.8, 9.2)  # Beta prior on a user's CTR: mean 8% (simulated impression CTR), worth 10 views
CVR_PRIOR = (0.5, 4.5)  # Beta prior on orders per click: mean 10%, worth 5 clicks
_LAST_LOG: dict[str, pd.DataFrame] = {}  # impression_log's last log built without a work_dir
QUICK_USERS = UserConfig(users=1_000, days=LONG + 7, sessions_per_day=150.0)

# A simulated user, keyed by the click simulator's id ("u000123").
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A simulated user (pipelines.simulation.users); user_id = 'u' + six digits.")

user_stats_fv = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=3650),  # a row holds until the next; windows emptying write their own zero row
    schema=[
        Field(name="user_impressions_7d", dtype=Int64, description="Items shown in the last 7 days",
              tags=bounds(0)),
        Field(name="user_clicks_7d", dtype=Int64, description="Clicks in the last 7 days", tags=bounds(0)),
        Field(name="user_orders_7d", dtype=Int64, description="Orders in the last 7 days", tags=bounds(0)),
        Field(name="user_ctr_7d", dtype=Float32, description="Clicks / impressions, 7 days, Beta prior",
              tags=bounds(0, 1)),
        Field(name="user_impressions_30d", dtype=Int64, description="Items shown in the last 30 days",
              tags=bounds(0)),
        Field(name="user_clicks_30d", dtype=Int64, description="Clicks in the last 30 days", tags=bounds(0)),
        Field(name="user_orders_30d", dtype=Int64, description="Orders in the last 30 days", tags=bounds(0)),
        Field(name="user_ctr_30d", dtype=Float32, description="Clicks / impressions, 30 days, Beta prior",
              tags=bounds(0, 1)),
        Field(name="user_cvr_30d", dtype=Float32, description="Orders / clicks, 30 days, Beta prior",
              tags=bounds(0, 1)),
    ],
    source=signal_source("user_stats"),
    description="A simulated user's engagement over trailing 7- and 30-day windows, as of the end of each day.",
    tags={"signal": "engagement", "grain": "user"},
)


def user_config(ctx: SignalContext) -> UserConfig:
    return QUICK_USERS if ctx.quick else UserConfig()


def impression_log(ctx: SignalContext) -> pd.DataFrame:
    """The simulated impression log of the training queries (pipelines.simulation.users), with each
    item's brand; cached under ctx.work_dir per settings, so every user view and the engagement
    models read one log."""
    queries = training_queries(ctx)
    config = user_config(ctx)
    items = ctx.lake.read("items")
    key = hashlib.sha256(json.dumps({
        "users": config.to_dict(), "seed": ctx.seed, "as_of": str(ctx.as_of),
        "judgments": _file_state(ctx.lake.path("judgments")),
        "queries": hashlib.sha256("\n".join(queries["query_id"]).encode()).hexdigest(),
        "items": hashlib.sha256("\n".join(items["item_id"].astype(str)).encode()).hexdigest()},
        sort_keys=True).encode()).hexdigest()[:16]
    cache = ctx.work_dir / "simulation" / f"impressions-{key}.parquet" if ctx.work_dir is not None else None
    if cache is not None and cache.exists():
        return pd.read_parquet(cache)
    if cache is None and key in _LAST_LOG:  # no scratch dir: the user views of one build share one run
        return _LAST_LOG[key].copy()
    attributes = item_attributes(items, config, ctx.seed)
    ranker = BM25Ranker.for_catalog(items, cache_dir=ctx.work_dir / "simulation" if ctx.work_dir else None)
    log = simulate_users(queries, ranker, attributes, training_judgments(ctx, queries), pd.Timestamp(ctx.as_of),
                         config, seed=ctx.seed)
    brand = attributes.set_index("item_id")["brand"]
    log["brand"] = pd.Categorical(log["item_id"].cat.categories.map(brand).to_numpy()[log["item_id"].cat.codes])
    if cache is not None:
        write_parquet(pa.Table.from_pandas(log, preserve_index=False), cache)
    else:
        _LAST_LOG.clear()
        _LAST_LOG[key] = log.copy()
    return log


def _file_state(path) -> list:
    """(path, size, mtime): a lake table rewritten between two builds gives another key."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def window_changes(events: pd.DataFrame, keys: Sequence[str], counts: dict[str, tuple[str, int]],
                   days: int) -> pd.DataFrame:
    """Trailing-window sums per key on each day one of them changes: keys, day, one column per entry
    of `counts` (output name -> (event column, window days)).

    An event of day d adds to a window of length L on days d .. d + L - 1, so each (key, day) sum is
    a running total of +value at d and -value at d + L; only days where some total changes are kept
    (up to day `days - 1`)."""
    daily = events.groupby([*keys, "day"], observed=True, sort=False)[
        sorted({col for col, _ in counts.values()})].sum().reset_index()
    deltas = []
    for name, (col, length) in counts.items():
        for sign, shift in ((1, 0), (-1, length)):
            part = daily[[*keys, "day"]].copy()
            part["day"] = part["day"].astype(np.int32) + shift
            part["delta"] = sign * daily[col].to_numpy(np.int64)
            part["name"] = name
            deltas.append(part[part["day"] < days])
    changes = pd.concat(deltas, ignore_index=True)
    wide = changes.pivot_table(index=[*keys, "day"], columns="name", values="delta", aggfunc="sum", fill_value=0,
                               observed=True).sort_index()
    wide = wide.reindex(columns=list(counts), fill_value=0)
    wide = wide[(wide != 0).any(axis=1)]  # an event entering as another leaves: nothing changed
    totals = wide.groupby(level=list(keys), observed=True, sort=False).cumsum()
    return totals.astype(np.int64).reset_index()


def stamps(day: pd.Series, as_of: pd.Timestamp, days: int) -> pd.Series:
    """The end of each day: day `days - 1` ends at as_of."""
    return pd.Timestamp(as_of) - pd.to_timedelta((days - 1 - day.to_numpy(np.int64)) * 86_400_000_000, unit="us")


def smoothed(hits: pd.Series, trials: pd.Series, prior: tuple[float, float]) -> np.ndarray:
    return ((hits + prior[0]) / (trials + prior[0] + prior[1])).to_numpy(np.float32)


def user_stats(ctx: SignalContext) -> pd.DataFrame:
    """Daily 7/30-day impressions, clicks and orders per user, on the days they change."""
    return user_stats_table(impression_log(ctx), pd.Timestamp(ctx.as_of), user_config(ctx).days)


def user_stats_table(log: pd.DataFrame, as_of: pd.Timestamp, days: int) -> pd.DataFrame:
    """The user_stats table of an impression log (user_id, day, click, order) of `days` days ending at as_of."""
    events = pd.DataFrame({"user_id": log["user_id"], "day": log["day"], "impressions": 1,
                           "clicks": log["click"].astype(np.int64), "orders": log["order"].astype(np.int64)})
    windows = window_changes(events, ["user_id"], {
        f"user_{name}_{length}d": (name, length)
        for length in (SHORT, LONG) for name in ("impressions", "clicks", "orders")}, days)
    stamp = stamps(windows["day"], as_of, days)
    out = windows.assign(user_id=windows["user_id"].astype(str), event_timestamp=stamp, created_timestamp=stamp)
    out["user_ctr_7d"] = smoothed(out["user_clicks_7d"], out["user_impressions_7d"], CTR_PRIOR)
    out["user_ctr_30d"] = smoothed(out["user_clicks_30d"], out["user_impressions_30d"], CTR_PRIOR)
    out["user_cvr_30d"] = smoothed(out["user_orders_30d"], out["user_clicks_30d"], CVR_PRIOR)
    return out[table_columns(user_stats_fv, [user])]


SIGNAL = Signal(user_stats_fv, producer=user_stats,
                engagement_features=("user_impressions_7d", "user_clicks_7d", "user_ctr_7d", "user_impressions_30d",
                                     "user_clicks_30d", "user_orders_30d", "user_ctr_30d", "user_cvr_30d"))
