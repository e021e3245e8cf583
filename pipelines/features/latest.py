"""What a materialization writes, as Feast selects it, and the loop over views that writes it.

Shared by the fast writers of Feast's online layouts (redis_fast, sqlite_fast): per view, the latest
row per entity key with start <= event_timestamp <= end (both ends inclusive, as Feast's offline
pull is), ties on event time broken by the later created_timestamp; full runs start at end - ttl,
incremental runs where the registry says the last run stopped (first run: now - ttl), and each
run's interval is recorded in the registry. Only the write of one view's rows differs per store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.value_type import ValueType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace

# write(view, rows, ints_via_float, progress) -> rows written: one view's latest rows into the store
ViewWriter = Callable[[FeatureView, pa.Table, "dict[str, bool] | None", Callable[[int], object]], int]


def latest_rows(path: Path, view: FeatureView, start: datetime,
                end: datetime) -> tuple[pa.Table, dict[str, bool]]:
    """The rows Feast would materialize for `view` over [start, end], read with duckdb, and for
    each int feature whether Feast converts it through float64 (see redis_wire.encode_values):
    Feast loads the whole window into pandas before deduplicating, so one null anywhere in the
    window, even in a row that loses, turns the column into float64 for every row."""
    src = view.batch_source
    if src.field_mapping:
        raise NotImplementedError(f"view {view.name!r}: field_mapping is not supported")
    ts, created = src.timestamp_field, src.created_timestamp_column
    cols = [*view.join_keys, ts, *([created] if created else []), *(f.name for f in view.features)]
    order = f"{quote(ts)} DESC" + (f", {quote(created)} DESC NULLS LAST" if created else "")
    window = f"FROM read_parquet(?) WHERE epoch_us({quote(ts)}) BETWEEN ? AND ?"
    ints = [f.name for f in view.features if f.dtype.to_value_type() in (ValueType.INT64, ValueType.INT32)]
    params = [str(path), micros(start), micros(end)]
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            f"SELECT {', '.join(map(quote, cols))} {window} QUALIFY row_number() OVER "
            f"(PARTITION BY {', '.join(map(quote, view.join_keys))} ORDER BY {order}) = 1", params).to_arrow_table()
        nulls = con.execute(f"SELECT {', '.join(f'bool_or({quote(c)} IS NULL)' for c in ints)} {window}",
                            params).fetchone() if ints else ()
    return rows, {c: bool(flag) for c, flag in zip(ints, nulls)}


def quote(name: str) -> str:
    """A SQL identifier, double-quoted (duckdb and SQLite alike)."""
    return '"' + name.replace('"', '""') + '"'


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(t: datetime) -> int:
    """Microseconds since the epoch, exactly (a naive time is UTC)."""
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(microseconds=1)


@dataclass
class ViewStats:
    rows: int
    written: int
    start: datetime
    end: datetime
    seconds: float


@dataclass
class MaterializeStats:
    end: datetime
    views: dict[str, ViewStats] = field(default_factory=dict)


def window_start(view: FeatureView, end: datetime, incremental: bool, now: datetime) -> datetime:
    """Where Feast would start this view's window (materialize vs materialize_incremental)."""
    if not incremental:
        return end - view.ttl
    if view.most_recent_end_time is not None:
        start = view.most_recent_end_time
        return start if start.tzinfo else start.replace(tzinfo=UTC)
    if view.ttl is None:
        raise ValueError(f"view {view.name!r}: incremental materialization needs a ttl or a prior run")
    return now - (view.ttl if view.ttl.total_seconds() > 0 else timedelta(weeks=52))


def materialize_views(ws: Workspace, store: FeatureStore, write: ViewWriter, views: list[str] | None,
                      end: datetime | None, incremental: bool) -> MaterializeStats:
    """Feast's materialize / materialize_incremental with `write` in place of the online store's
    own write: each view's latest rows, a progress bar per view, the interval into the registry."""
    now = datetime.now(UTC)
    end = end or now.replace(microsecond=0)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    stats = MaterializeStats(end=end)
    names = views or [fv.name for fv in store.list_feature_views()]
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as bar:
        for name in names:
            view = store.get_feature_view(name)
            start = window_start(view, end, incremental, now)
            t0 = time.perf_counter()
            rows, via_float = latest_rows(table_path(ws, view), view, start, end)
            if store.config.materialization_config.pull_latest_features:
                via_float = None  # Feast deduplicates in SQL first: only selected rows count
            task = bar.add_task(f"{name} [{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}]", total=len(rows))
            written = write(view, rows, via_float, lambda n, t=task: bar.advance(t, n))
            store.registry.apply_materialization(view, store.project, start, end)
            stats.views[name] = ViewStats(len(rows), written, start, end, time.perf_counter() - t0)
    return stats
