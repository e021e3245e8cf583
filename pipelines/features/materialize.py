"""Copy the latest value of every feature view from the offline store into the online store.

Full runs load each view's whole TTL window up to `end`; incremental runs continue from where
the registry says the last run stopped. Online writes keep the newest event time per key, so
running either twice leaves the online store unchanged.

After the rows, each view's watermark goes into the online store itself (features/watermark.py),
so the service can tell a store that lost its data from one that never had a key. The registry
cannot: it remembers up to when a view was materialized, not into which store. So an incremental
run loads in full every view the store has no watermark for (a new, flushed or restarted-empty
store): continuing from the registry's end would leave it empty.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from feast import FeatureStore

from pipelines.features.repo import feature_store, ray_session
from pipelines.features.watermark import read_watermarks, record_watermarks
from pipelines.workspace import Workspace


@dataclass(frozen=True)
class MaterializeReport:
    views: list[str]
    incremental: bool
    end: datetime
    seconds: float
    refilled: list[str]  # views an incremental run loaded in full: the store had no watermark for them


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def materialize(ws: Workspace, incremental: bool = True, end: datetime | None = None,
                views: list[str] | None = None, engine: str = "auto") -> MaterializeReport:
    """Materialize `views` (default: all) up to `end` (default: now), full or incremental, then
    record their watermarks in the online store.

    engine "auto" writes Redis through redis_fast and SQLite through sqlite_fast (Feast's layouts,
    batched: many times faster, memory bounded by a batch); "feast" forces Feast's own writers. A
    workspace whose offline store is Ray always materializes through Feast, on its Ray compute
    engine (the fast writers read the tables in this process, which is what Ray is there to avoid)."""
    if engine not in ("auto", "feast"):
        raise ValueError(f"engine {engine!r}: expected 'auto' or 'feast'")
    with ray_session(ws):
        return _materialize(ws, incremental, end, views, "feast" if ws.offline.startswith("ray") else engine)


def _materialize(ws: Workspace, incremental: bool, end: datetime | None, views: list[str] | None,
                 engine: str) -> MaterializeReport:
    store = feature_store(ws)
    names = views or [fv.name for fv in store.list_feature_views()]
    end = end or _now()
    t0 = time.perf_counter()
    previous = read_watermarks(store)
    refilled = [name for name in names if incremental and name not in previous]
    full = refilled if incremental else names
    _write(ws, store, [name for name in names if name not in full], end, True, engine)
    _write(ws, store, full, end, False, engine)
    record_watermarks(ws, names, previous)
    return MaterializeReport(views=names, incremental=incremental, end=end,
                             seconds=time.perf_counter() - t0, refilled=refilled)


def _write(ws: Workspace, store: FeatureStore, names: list[str], end: datetime, incremental: bool,
           engine: str) -> None:
    if not names:
        return
    if engine == "auto" and ws.online_type == "redis":
        from pipelines.features.redis_fast import materialize_redis

        materialize_redis(ws, views=names, end=end, incremental=incremental)
    elif engine == "auto" and ws.online_type == "sqlite":
        from pipelines.features.sqlite_fast import materialize_sqlite

        materialize_sqlite(ws, views=names, end=end, incremental=incremental)
    elif incremental:
        store.materialize_incremental(end_date=end, feature_views=names)
    else:
        for name in names:  # each view from its own TTL, as incremental runs do on first use
            start = end - store.get_feature_view(name).ttl
            store.materialize(start_date=start, end_date=end, feature_views=[name])
