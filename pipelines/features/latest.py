"""What a materialization writes, as Feast selects it, and the loop over views that writes it.

Shared by the fast writers of Feast's online layouts (redis_fast, sqlite_fast): per view, the latest
row per entity key with start <= event_timestamp <= end (both ends inclusive, as Feast's offline
pull is), ties on event time broken by the later created_timestamp; full runs start at end - ttl,
incremental runs where the registry says the last run stopped (first run: now - ttl), and each
run's interval is recorded in the registry. Only the write of one view's rows differs per store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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

# write(view, rows, ints_via_float, progress) -> rows written: one view's latest rows into the store,
# as one table or (materialize_views' stream_rows) an iterator of record batches in key order
ViewWriter = Callable[[FeatureView, "pa.Table | Iterator[pa.RecordBatch]", "dict[str, bool] | None",
                       Callable[[int], object]], int]


def latest_rows(path: Path, view: FeatureView, start: datetime,
                end: datetime) -> tuple[pa.Table, dict[str, bool]]:
    """The rows Feast would materialize for `view` over [start, end], read with duckdb, and for
    each int feature whether Feast converts it through float64 (see redis_wire.encode_values):
    Feast loads the whole window into pandas before deduplicating, so one null anywhere in the
    window, even in a row that loses, turns the column into float64 for every row."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        sql, params = _latest_sql(path, view, start, end)
        return con.execute(sql, params).to_arrow_table(), _ints_via_float(con, path, view, start, end)


def latest_batches(path: Path, view: FeatureView, start: datetime, end: datetime, batch_rows: int,
                   selected_nulls: bool = False) -> tuple[Iterator[pa.RecordBatch], int, dict[str, bool]]:
    """latest_rows streamed: record batches of at most `batch_rows` in the order of the entity
    keys' serialized bytes (serialize_entity_key v3 of string keys: per join key by name, its byte
    length as little-endian uint32, then its bytes), so a B-tree keyed by them is filled left to
    right; the row count; ints_via_float (over the selected rows only with `selected_nulls`, as
    with Feast's pull_latest_features). Memory: one batch in Python; duckdb's sort spills to disk."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql, params = _latest_sql(path, view, start, end)
    count = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
    via_float = _ints_via_float(con, path, view, start, end, (sql, params) if selected_nulls else None)
    order = ", ".join(", ".join([*(f"octet_length(encode({quote(k)})) // {256 ** i} % 256" for i in range(4)),
                                 f"encode({quote(k)})"]) for k in sorted(view.join_keys))
    reader = con.execute(f"{sql} ORDER BY {order}", params).fetch_record_batch(batch_rows)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        finally:
            con.close()

    return batches(), count, via_float


def _latest_sql(path: Path, view: FeatureView, start: datetime, end: datetime) -> tuple[str, list]:
    src = view.batch_source
    if src.field_mapping:
        raise NotImplementedError(f"view {view.name!r}: field_mapping is not supported")
    ts, created = src.timestamp_field, src.created_timestamp_column
    cols = [*view.join_keys, ts, *([created] if created else []), *(f.name for f in view.features)]
    order = f"{quote(ts)} DESC" + (f", {quote(created)} DESC NULLS LAST" if created else "")
    return (f"SELECT {', '.join(map(quote, cols))} {_WINDOW.format(ts=quote(ts))} QUALIFY row_number() OVER "
            f"(PARTITION BY {', '.join(map(quote, view.join_keys))} ORDER BY {order}) = 1",
            [str(path), micros(start), micros(end)])


_WINDOW = "FROM read_parquet(?) WHERE epoch_us({ts}) BETWEEN ? AND ?"


def _ints_via_float(con, path: Path, view: FeatureView, start: datetime, end: datetime,
                    selected: tuple[str, list] | None = None) -> dict[str, bool]:
    """Per int feature: a null in the window (or, given `selected`, in that query's rows)."""
    ints = [f.name for f in view.features if f.dtype.to_value_type() in (ValueType.INT64, ValueType.INT32)]
    if not ints:
        return {}
    source, params = (f"FROM ({selected[0]})", selected[1]) if selected else (
        _WINDOW.format(ts=quote(view.batch_source.timestamp_field)), [str(path), micros(start), micros(end)])
    nulls = con.execute(f"SELECT {', '.join(f'bool_or({quote(c)} IS NULL)' for c in ints)} {source}",
                        params).fetchone()
    return {c: bool(flag) for c, flag in zip(ints, nulls)}


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
                      end: datetime | None, incremental: bool, stream_rows: int | None = None) -> MaterializeStats:
    """Feast's materialize / materialize_incremental with `write` in place of the online store's
    own write: each view's latest rows, a progress bar per view, the interval into the registry.
    stream_rows: hand `write` record batches of that size in entity-key byte order
    (latest_batches) instead of one table."""
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
            pull_latest = store.config.materialization_config.pull_latest_features
            if stream_rows:
                rows, total, via_float = latest_batches(table_path(ws, view), view, start, end, stream_rows,
                                                        selected_nulls=pull_latest)
            else:
                rows, via_float = latest_rows(table_path(ws, view), view, start, end)
                total = len(rows)
                if pull_latest:
                    via_float = None  # Feast deduplicates in SQL first: only selected rows count
            task = bar.add_task(f"{name} [{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}]", total=total)
            written = write(view, rows, via_float, lambda n, t=task: bar.advance(t, n))
            store.registry.apply_materialization(view, store.project, start, end)
            stats.views[name] = ViewStats(total, written, start, end, time.perf_counter() - t0)
    return stats
