"""Materialize into and read from Feast's SQLite online store in batches, in Feast's own layout.

Feast's SQLite store turns every value into a ValueProto object and runs one upsert per (key,
feature) from Python, after the materialization has loaded the whole view into pandas: ~6k rows/s
and a peak of many GB on a 3M-row view. Here one view is written in batches of rows, each batch
encoded column-wise (the same bytes redis_wire makes for Redis: serialize_entity_key v3 and
serialized ValueProtos) and handed to SQLite as one executemany in one transaction. The layout is
Feast 0.67's, so Feast reads what we write and vice versa (tests/test_sqlite_fast.py compares every
table row by row with Feast's own writer):

    table <project>_<view>: entity_key BLOB (no project suffix), feature_name TEXT, value BLOB
    (ValueProto), value_text TEXT (the scalar as Python's str(); NULL for a null), vector_value BLOB
    (NULL: no vector stores), event_ts and created_ts as INTEGER seconds (sqlite3's datetime
    adapter Feast registers: int(naive_utc.timestamp())); PRIMARY KEY (entity_key, feature_name).

One rule differs on purpose: Feast's SQLite upsert overwrites unconditionally; here an older event
never overwrites a newer one (`WHERE excluded.event_ts >= event_ts`), as Feast's Redis store
behaves and as a rerun or an out-of-order backfill needs. Equal event times overwrite (a corrected
row of the same moment wins, as in Feast).

Reads (`SqliteFeatureReader`): one statement per join-key layout (a UNION ALL over the views that
share it) for all of a request's distinct keys; a multi-key entity's key is serialize_entity_key of
its join keys sorted by name, as Feast's SQLite store keys it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import compute_table_id
from feast.value_type import ValueType

from pipelines.compat import require
from pipelines.features import redis_wire as wire
from pipelines.features.latest import MaterializeStats, materialize_views, quote
from pipelines.features.repo import feature_store
from pipelines.features.service_reader import ServiceReader, encoded_id
from pipelines.workspace import Workspace

require("feast")  # the layout written here is Feast 0.67's implementation (see pipelines/compat.py)
BATCH_ROWS = 20_000  # entity rows per transaction: bounded memory whatever the view's size
CHUNK_KEYS = 500  # keys per statement: SQLite's bound-parameter limit, with room for several views
CACHE_KIB = 32 * 1024  # SQLite's page cache while writing (default 2 MB; key-ordered inserts need little)
_EPOCH = datetime(1970, 1, 1)
_NUMBERS = {ValueType.INT64, ValueType.INT32, ValueType.FLOAT, ValueType.DOUBLE}


def database_path(store: FeatureStore) -> Path:
    """Where Feast's SQLite online store keeps its file (relative paths: under the repo)."""
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() or store.config.repo_path is None else Path(store.config.repo_path) / path


def connect(store: FeatureStore) -> sqlite3.Connection:
    cfg = store.config.online_store
    if getattr(cfg, "vector_enabled", False) or getattr(cfg, "enable_openai_compatible_store", False):
        raise NotImplementedError("sqlite_fast writes plain values; vector or openai-compatible stores: use Feast")
    if store.config.entity_key_serialization_version != 3:
        raise ValueError("sqlite_fast writes entity keys in serialization version 3 only")
    return sqlite3.connect(database_path(store), check_same_thread=False)


def table_name(store: FeatureStore, view: FeatureView) -> str:
    return compute_table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning)


def feast_seconds(micros: np.ndarray) -> np.ndarray:
    """What Feast's sqlite3 adapter stores for these UTC instants: int(naive.timestamp()), which
    reads the naive UTC time in the process's local zone, as Feast does (UTC here: the epoch second)."""
    unique, inverse = np.unique(micros, return_inverse=True)
    seconds = [int((_EPOCH + timedelta(microseconds=int(u))).timestamp()) for u in unique]
    return np.asarray(seconds, dtype=np.int64)[inverse]


def value_texts(arr: pa.Array, value_type: ValueType, via_float: bool) -> list[str | None]:
    """Feast's value_text column: str() of the scalar the ValueProto holds (extract_text_and_num);
    a float32 feature as the double its proto field returns; an int Feast sent through float64 as
    the integer that float holds; None for a null or a type without a text form."""
    if value_type == ValueType.STRING:
        return arr.cast(pa.string()).to_pylist()
    if value_type == ValueType.BOOL:
        return [None if v is None else str(v) for v in arr.to_pylist()]
    if value_type not in _NUMBERS:
        return [None] * len(arr)
    valid = wire.valid_mask(arr)
    if value_type in (ValueType.INT64, ValueType.INT32):  # through float64 and back when Feast did so
        ints = arr.cast(pa.float64(), safe=False) if via_float else arr
        values = ints.fill_null(0).to_numpy().astype(np.int64).tolist()
    else:
        numbers = arr.cast(pa.float64()).fill_null(0).to_numpy()
        if value_type == ValueType.FLOAT:
            numbers = numbers.astype(np.float32).astype(np.float64)
        values = numbers.tolist()
    return [str(v) if ok else None for v, ok in zip(values, valid.tolist())]


def write_view(conn: sqlite3.Connection, store: FeatureStore, view: FeatureView,
               rows: pa.Table | Iterable[pa.RecordBatch], ints_via_float: dict[str, bool] | None = None,
               batch_rows: int = BATCH_ROWS, progress: Callable[[int], object] | None = None,
               unique_keys: bool = False) -> int:
    """Upsert each row (join keys, event timestamp [, created], features) as Feast would, an
    older event never replacing a newer one; entity rows offered. `rows`: a table (any order; it
    is sorted by serialized key here) or record batches already in that order with
    `ints_via_float` given (latest.latest_batches). unique_keys: one row per entity key (what
    latest_* select), so into an empty table a plain INSERT does."""
    src = view.batch_source
    ts_col, created_col = src.timestamp_field, src.created_timestamp_column
    key_types = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
    if isinstance(rows, pa.Table):
        keys_all = wire.encode_entity_keys({k: rows[k].combine_chunks() for k in key_types}, key_types, "")
        rows = rows.take(pc.sort_indices(keys_all))  # B-tree order: each insert lands next to the last one
        if ints_via_float is None:
            ints_via_float = {f.name: rows[f.name].null_count > 0 for f in view.features}
        rows = rows.to_batches(max_chunksize=batch_rows)
    features = sorted((f.name, f.dtype.to_value_type(), ints_via_float.get(f.name, False))
                      for f in view.features)  # the primary key's order within an entity
    name = quote(table_name(store, view))
    insert = (f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
              "VALUES (?, ?, ?, ?, ?, ?)")
    upsert = (f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
              "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
              "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
              f"created_ts = excluded.created_ts WHERE excluded.event_ts >= {name}.event_ts")
    if unique_keys and conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is None:
        upsert = insert  # an empty table and one row per key: nothing to resolve, ~1.3x faster
    offered = 0
    for batch in rows:
        keys = wire.encode_entity_keys({k: batch[k] for k in key_types}, key_types, "").to_pylist()
        stamps = feast_seconds(wire.column_micros(batch[ts_col])).tolist()
        created = [None] * len(keys)
        if created_col:
            seconds = feast_seconds(wire.column_micros(batch[created_col])).astype(object)
            seconds[~wire.valid_mask(batch[created_col])] = None
            created = seconds.tolist()
        columns = [(feature, wire.encode_values(batch[feature], vt, via_float).to_pylist(),
                    value_texts(batch[feature], vt, via_float)) for feature, vt, via_float in features]
        rows = ((key, feature, values[i], texts[i], stamps[i], created[i])
                for i, key in enumerate(keys) for feature, values, texts in columns)
        with conn:  # one transaction per batch
            conn.executemany(upsert, rows)
        offered += len(keys)
        if progress:
            progress(len(keys))
    return offered


def materialize_sqlite(ws: Workspace, views: list[str] | None = None, end: datetime | None = None,
                       incremental: bool = True, batch_rows: int = BATCH_ROWS) -> MaterializeStats:
    """Feast's materialize / materialize_incremental into its SQLite store through write_view."""
    store = feature_store(ws)
    with connect(store) as conn:
        conn.execute("PRAGMA synchronous = NORMAL")  # each batch's commit waits for the journal, not the disk twice
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # the B-trees' hot pages stay in memory

        def write(view: FeatureView, rows: Iterable[pa.RecordBatch], via_float: dict[str, bool] | None,
                  progress) -> int:
            _require_table(conn, store, view)
            return write_view(conn, store, view, rows, via_float, batch_rows, progress, unique_keys=True)

        return materialize_views(ws, store, write, views, end, incremental, stream_rows=batch_rows)


def _require_table(conn: sqlite3.Connection, store: FeatureStore, view: FeatureView) -> None:
    name = table_name(store, view)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is None:
        raise FileNotFoundError(f"online store {database_path(store)} has no table {name!r} for view "
                                f"{view.name!r}: run `unisup apply` first")


class SqliteFeatureReader(ServiceReader):
    """get_online_features for entity rows (tuples in `keys` order) from Feast's SQLite store. Views
    sharing join keys (the pair views; items; queries; users; ...) are read by one statement, a
    UNION ALL of one SELECT per view over the request's distinct keys, whose serialized form is
    built once."""

    def __init__(self, ws: Workspace, service_name: str = "retriever_online", store: FeatureStore | None = None):
        super().__init__(ws, service_name, store)
        self.conn = connect(self.store)
        self._lock = threading.Lock()  # one connection, shared by a service's threads
        self.groups = [(g.prefix, g.positions, None if g.strings else g.encoders,  # None: encoded_id each
                        [(name, wanted, quote(table_name(self.store, self.views[name])))
                         for name, wanted in g.views.items()])
                       for g in self.entity_groups]

    def _fetch(self, rows: Sequence[tuple]) -> dict[tuple[str, str], list]:
        values: dict[tuple[str, str], list] = {}
        for prefix, positions, encoders, views in self.groups:
            entities = [tuple(row[p] for p in positions) for row in rows]
            if encoders is None:
                unique = {e: b"".join([prefix, *map(encoded_id, e)]) for e in dict.fromkeys(entities)}
            else:
                unique = {e: b"".join([prefix, *(enc(v) for enc, v in zip(encoders, e))])
                          for e in dict.fromkeys(entities)}
            keys = list(unique.values())
            found: dict[tuple[int, bytes, str], bytes] = {}
            for start in range(0, len(keys), CHUNK_KEYS):
                chunk = keys[start:start + CHUNK_KEYS]
                marks = ", ".join("?" * len(chunk))
                sql = " UNION ALL ".join(
                    f"SELECT {v}, entity_key, feature_name, value FROM {table} WHERE entity_key IN ({marks}) "
                    f"AND feature_name IN ({', '.join('?' * len(wanted))})"
                    for v, (_, wanted, table) in enumerate(views))
                params = [p for _, wanted, _ in views for p in (*chunk, *wanted)]
                with self._lock:
                    stored = self.conn.execute(sql, params).fetchall()
                found.update(((v, key, feature), value) for v, key, feature, value in stored)
            ordered = [unique[e] for e in entities]
            for v, (view_name, wanted, _) in enumerate(views):
                for feature, vt in wanted.items():
                    values[(view_name, feature)] = [wire.decode_value(found.get((v, key, feature)), vt)
                                                    for key in ordered]
        return values
