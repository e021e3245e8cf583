"""The materialization watermark: what the online store should hold, recorded in the store itself.

Why in the store: the registry remembers up to when each view was materialized, not into which
store, and the store itself cannot tell "never had this key" from "lost it". A Redis restarted
without persistence, flushed or evicting under maxmemory answers every lookup with nulls, and
without a record beside the data nothing notices. So `materialize` writes, per view, a watermark
into the same store, after the view's rows: up to when (the run's materialization end), how many
entity keys its last non-empty run selected, and a small deterministic sample of those keys.
Redis: one hash, WATERMARK_KEY, field = view, value = JSON (a flush takes it along with the data).
SQLite: the table WATERMARK_TABLE in online.db, one row per view.

`check` reads it back and probes the sample keys (one Redis round trip, or one query per view):

- missing: the store has no watermark for a view (never materialized into it, or flushed /
  restarted empty), or some of its sample keys are gone (evicted or expired). Answers carry nulls.
- stale: the watermark's end is more than the view's ttl ago (every value it holds has expired
  as a point-in-time read would see it; Feast's online read does not apply the ttl), or the
  registry's materialization end is later than the watermark's (a later run went to another
  store; incremental runs here would skip that gap: `--full`). Values are served, but old.

Sample keys are read back through Feast's key layout (redis_wire.encode_key), which holds for
string join keys only, as every entity in this repo has.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import redis
from feast import FeatureStore, FeatureView
from redis.exceptions import RedisClusterException

from pipelines.features import redis_wire as wire
from pipelines.features.latest import micros
from pipelines.features.redis_pipe import RedisConnector
from pipelines.features.repo import feature_store
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace

WATERMARK_KEY = b"unisup:watermark"  # not Feast's key shape (serialized key + project), so no Feast scan sees it
WATERMARK_TABLE = "_unisup_watermark"  # Feast's SQLite tables are all named PROJECT_VIEW
SAMPLE_KEYS = 8


@dataclass(frozen=True)
class Watermark:
    """One view's record: materialized up to `end`; `keys` entity keys (and `sample` of them) selected by
    its last run that selected any (an incremental run with nothing new keeps the earlier ones)."""

    end: str  # ISO 8601, UTC
    keys: int
    sample: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # deterministic: an identical rerun rewrites the same bytes

    @classmethod
    def from_json(cls, text: str | bytes) -> Watermark:
        return cls(**json.loads(text))

    @property
    def end_time(self) -> datetime:
        return datetime.fromisoformat(self.end)


class RedisMarks:
    """Watermarks and key probes on Feast's Redis online store."""

    def __init__(self, store: FeatureStore, timeout: float | None = None):
        # with a timeout, the service's checks fail within it instead of hanging on a dead socket
        self.connector, self.project = RedisConnector(store.config.online_store, timeout), store.project

    def read(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.connector.client.hgetall(WATERMARK_KEY).items()}

    def write(self, marks: dict[str, str]) -> None:
        self.connector.client.hset(WATERMARK_KEY, mapping=marks)

    def present(self, probes: dict[str, list[dict[str, str]]]) -> dict[str, int]:
        """Per view, how many of its keys have the view's `_ts` field: one pipelined round trip (on a
        cluster, redis-py's cluster pipeline: one per node)."""
        pipe = self.connector.client.pipeline(transaction=False)
        for view, keys in probes.items():
            for key in keys:
                pipe.hexists(wire.encode_key(key, self.project), wire.ts_field(view))
        found = iter(pipe.execute())
        return {view: sum(bool(next(found)) for _ in keys) for view, keys in probes.items()}


class SqliteMarks:
    """Watermarks and key probes on Feast's SQLite online store (online.db)."""

    def __init__(self, store: FeatureStore):
        self.path, self.project = Path(store.config.online_store.path), store.project

    def read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)) as con:
            if not _has_table(con, WATERMARK_TABLE):
                return {}
            return dict(con.execute(f'SELECT view, mark FROM "{WATERMARK_TABLE}"').fetchall())

    def write(self, marks: dict[str, str]) -> None:
        with closing(sqlite3.connect(self.path, timeout=30)) as con, con:
            con.execute(f'CREATE TABLE IF NOT EXISTS "{WATERMARK_TABLE}" (view TEXT PRIMARY KEY, mark TEXT NOT NULL)')
            con.executemany(f'INSERT OR REPLACE INTO "{WATERMARK_TABLE}" VALUES (?, ?)', marks.items())

    def present(self, probes: dict[str, list[dict[str, str]]]) -> dict[str, int]:
        """Per view, how many of its keys have rows in Feast's table for the view."""
        if not self.path.exists():
            return dict.fromkeys(probes, 0)
        found = {}
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)) as con:
            for view, keys in probes.items():
                table = f"{self.project}_{view}"
                if not keys or not _has_table(con, table):
                    found[view] = 0
                    continue
                blobs = [wire.encode_key(key, "") for key in keys]  # serialize_entity_key: the Redis key minus project
                found[view] = con.execute(f'SELECT count(DISTINCT entity_key) FROM "{table}" WHERE entity_key IN '
                                          f'({", ".join("?" * len(blobs))})', blobs).fetchone()[0]
        return found


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def online_marks(store: FeatureStore, timeout: float | None = None) -> RedisMarks | SqliteMarks:
    """The watermark reader/writer for the store's configured online store."""
    return SqliteMarks(store) if store.config.online_store.type == "sqlite" else RedisMarks(store, timeout)


def read_watermarks(store: FeatureStore) -> dict[str, Watermark]:
    return {view: Watermark.from_json(text) for view, text in online_marks(store).read().items()}


def record_watermarks(ws: Workspace, views: Iterable[str], previous: dict[str, Watermark]) -> dict[str, Watermark]:
    """After the views' rows are written: each view's watermark from the interval this run recorded
    in the registry and the keys of the view's table in that interval, written into the online store."""
    store = feature_store(ws)  # a fresh registry read: the intervals this run just recorded
    marks = {}
    for name in views:
        view = store.get_feature_view(name)
        start, end = (_utc(t) for t in view.materialization_intervals[-1])
        keys, sample = window_keys(table_path(ws, view), view, start, end)
        old = previous.get(name)
        if keys == 0 and old is not None:  # nothing new in this window: the earlier keys are still there
            keys, sample = old.keys, old.sample
        marks[name] = Watermark(end=end.isoformat(), keys=keys, sample=sample)
    online_marks(store).write({name: mark.to_json() for name, mark in marks.items()})
    return marks


def window_keys(path: Path, view: FeatureView, start: datetime, end: datetime) -> tuple[int, list[dict[str, str]]]:
    """Distinct entity keys of the view's table with start <= event time <= end (what a run over
    that interval selects), and SAMPLE_KEYS of them picked by hash: spread over the table, and the
    same ones on every run over the same rows."""
    keys = ", ".join(f'"{k}"' for k in view.join_keys)
    ts = view.batch_source.timestamp_field
    rows = duckdb.execute(
        f"SELECT {keys}, count(*) OVER () FROM (SELECT DISTINCT {keys} FROM read_parquet(?) "
        f'WHERE epoch_us("{ts}") BETWEEN ? AND ?) ORDER BY hash({keys}), {keys} LIMIT {SAMPLE_KEYS}',
        [str(path), micros(start), micros(end)]).fetchall()
    return (rows[0][-1] if rows else 0), [dict(zip(view.join_keys, map(str, row[:-1]))) for row in rows]


def _utc(t: datetime) -> datetime:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class ViewState:
    status: str  # "ok" | "missing" | "stale"
    reason: str = ""
    end: str | None = None
    keys: int = 0


@dataclass(frozen=True)
class StoreCheck:
    """One check of the online store against its watermark; `error` set when the store could not be
    read (then nothing is known about its views: a down store is the lookup's degraded case)."""

    checked_at: datetime
    views: dict[str, ViewState] = field(default_factory=dict)
    error: str | None = None

    def missing(self, views: Iterable[str] | None = None) -> list[str]:
        return self._with("missing", views)

    def stale(self, views: Iterable[str] | None = None) -> list[str]:
        return self._with("stale", views)

    def _with(self, status: str, views: Iterable[str] | None) -> list[str]:
        wanted = set(self.views if views is None else views)
        return sorted(name for name, state in self.views.items() if state.status == status and name in wanted)

    def describe(self) -> dict:
        return {"checked_at": self.checked_at.isoformat(), "error": self.error, "missing": self.missing(),
                "stale": self.stale(), "views": {name: asdict(state) for name, state in self.views.items()}}


def check(marks_store: RedisMarks | SqliteMarks, views: Sequence[FeatureView], now: datetime) -> StoreCheck:
    """Every view of the registry against the store's watermark and its sample keys."""
    try:
        marks = {name: Watermark.from_json(text) for name, text in marks_store.read().items()}
        found = marks_store.present({v.name: marks[v.name].sample for v in views if v.name in marks})
    except (redis.RedisError, RedisClusterException, sqlite3.Error, OSError) as exc:
        return StoreCheck(now, error=f"{type(exc).__name__}: {exc}")
    return StoreCheck(now, {v.name: _state(v, marks.get(v.name), found.get(v.name, 0), now) for v in views})


def _state(view: FeatureView, mark: Watermark | None, found: int, now: datetime) -> ViewState:
    registry_end = _utc(view.most_recent_end_time) if view.most_recent_end_time else None
    if mark is None:
        if registry_end is None:
            return ViewState("missing", "never materialized: run `unisup materialize`")
        return ViewState("missing", f"the registry says materialized up to {registry_end.isoformat()} but the "
                                    "online store has no watermark: flushed or restarted empty? `unisup materialize` "
                                    "refills it (a view without a watermark is loaded in full)")
    at = {"end": mark.end, "keys": mark.keys}
    if found < len(mark.sample):
        return ViewState("missing", f"{len(mark.sample) - found} of {len(mark.sample)} sampled keys are gone "
                                    "(flushed, evicted or expired): run `unisup materialize --full`", **at)
    if view.ttl and view.ttl.total_seconds() > 0 and now > mark.end_time + view.ttl:
        return ViewState("stale", f"materialized up to {mark.end}, more than its ttl ({view.ttl}) ago: every "
                                  "value it holds has expired; run `unisup materialize`", **at)
    if registry_end is not None and registry_end > mark.end_time:
        return ViewState("stale", f"the registry says materialized up to {registry_end.isoformat()}, this store "
                                  "only up to its watermark (a later run went to another store): run "
                                  "`unisup materialize --full`", **at)
    return ViewState("ok", **at)
