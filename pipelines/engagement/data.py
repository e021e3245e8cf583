"""Training rows of the engagement models: simulated impressions with their features and outcomes.

Rows come from the impression log the user views aggregate (pipelines.signals.user_stats.
impression_log, read with the settings of the last `signals build`), split by day into training,
calibration and held-out days (EngagementConfig). Training days keep every click and a seeded share
w of the rest (negative downsampling, the DSP recipe: ~10x fewer rows, the same positives); the
calibration and held-out days keep every impression, so their rates are the true ones.

Features, two reads through the PIT engine (pipelines.features.pit):
- `engagement` (the user views) as of each impression: a row sees its user's windows up to the end of
  the day before, never the impression's own outcome or anything later;
- `ranking` (the ranker's pair, query and item features) once per distinct (query, item) at the log's
  as-of, the way the ranker's own table reads them: none of them is aggregated from this log (the
  pair engagement comes from the population replay), and the pair signals are stamped near as-of,
  so reading them per impression would leave every early day without them.
plus `position` (1..10): clicks depend on the slot, so the models learn it and /search asks for slot 1.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.engagement.calibration import downsample_negatives
from pipelines.engagement.config import EngagementConfig
from pipelines.features.pit import historical_features
from pipelines.features.repo import feature_store
from pipelines.signals.spec import SignalContext
from pipelines.signals.user_stats import impression_log, user_config
from pipelines.workspace import ConfigError, Workspace

USER_SERVICE, PAIR_SERVICE = "engagement", "ranking"
ROLES = ("train", "calibration", "heldout")
LABELS = ("click", "order")


@dataclass
class ImpressionRows:
    """Rows (keys, day, role, `position`, features, click, order; training days downsampled), which
    columns are features (the pair service's, the user service's), PIT seconds, the log's row counts."""

    rows: pd.DataFrame
    pair_features: list[str]
    user_features: list[str]
    seconds: dict[str, float]
    log_rows: dict[str, int]
    as_of: str


def signals_context(ws: Workspace) -> SignalContext:
    """The SignalContext of the workspace's last `signals build` (as-of, seed, quick), so the log
    read here is the one the user views were aggregated from."""
    path = ws.cache_dir / "signals_build.json"
    if not path.exists():
        raise ConfigError(f"{path} is missing: run `unisup signals build` before training engagement models")
    built = json.loads(path.read_text())
    return SignalContext(lake=ws.lake, as_of=pd.Timestamp(built["as_of"]), seed=int(built["seed"]),
                         quick=bool(built["quick"]), work_dir=ws.cache_dir)


def day_roles(days: int, config: EngagementConfig) -> np.ndarray:
    """Per day of the log: "train", "calibration", "heldout" or "" (before first_day)."""
    roles = np.full(days, "", dtype=object)
    heldout = days - config.heldout_days
    calibration = heldout - config.calibration_days
    if calibration <= config.first_day:
        raise ConfigError(f"a {days}-day log leaves no training day after day {config.first_day} before "
                          f"{config.calibration_days} calibration and {config.heldout_days} held-out days")
    roles[config.first_day:calibration] = "train"
    roles[calibration:heldout] = "calibration"
    roles[heldout:] = "heldout"
    return roles


def impression_rows(ws: Workspace, config: EngagementConfig, console: Console | None = None) -> ImpressionRows:
    """The log's rows of training (downsampled), calibration and held-out days with their features."""
    console = console or Console(stderr=True)
    ctx = signals_context(ws)
    log = impression_log(ctx)
    roles = day_roles(user_config(ctx).days, config)[log["day"].to_numpy()]
    train = roles == "train"
    keep = ~train | downsample_negatives(log["click"].to_numpy(), config.negative_rate, config.seed)
    counted = {role: int((roles == role).sum()) for role in ROLES}
    rows = log.loc[keep & (roles != "")].reset_index(drop=True)
    rows["role"] = roles[keep & (roles != "")]
    console.print(f"engagement data: {len(log):,} impressions; training days {counted['train']:,} -> "
                  f"{int((rows['role'] == 'train').sum()):,} kept (w = {config.negative_rate}), calibration "
                  f"{counted['calibration']:,}, held-out {counted['heldout']:,}")

    store = feature_store(ws)
    seconds = {}
    keys = rows[["user_id", "query_id", "item_id", "brand"]].astype(str)  # the log's categoricals, once
    with console.status(f"point-in-time user features for {len(rows):,} impressions"):
        t = time.perf_counter()
        entities = keys[["user_id", "brand"]].assign(event_timestamp=rows["event_timestamp"])
        users = historical_features(store, store.get_feature_service(USER_SERVICE), entities)
        seconds["pit_user"] = time.perf_counter() - t
    with console.status("pair, query and item features"):
        t = time.perf_counter()
        pairs = keys[["query_id", "item_id"]].drop_duplicates()
        stored = historical_features(store, store.get_feature_service(PAIR_SERVICE),
                                     pairs.assign(event_timestamp=ctx.as_of))
        seconds["pit_pairs"] = time.perf_counter() - t
    user_features = [c for c in users.columns if c not in entities.columns]
    pair_features = [c for c in stored.columns if c not in ("query_id", "item_id", "event_timestamp")]
    joined = keys[["query_id", "item_id"]].merge(stored.drop(columns="event_timestamp"), on=["query_id", "item_id"],
                                                  how="left")
    out = pd.concat([keys, rows[["event_timestamp", "day", "role", "position"]],
                     joined[pair_features], users[user_features],
                     rows[list(LABELS)].astype(np.int8)], axis=1)
    return ImpressionRows(out, pair_features, user_features, {k: round(v, 2) for k, v in seconds.items()},
                          {"log": len(log), **counted}, str(ctx.as_of))
