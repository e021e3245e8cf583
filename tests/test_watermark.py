"""The materialization watermark (pipelines/features/watermark.py): written by `materialize` into the
online store itself, read back and probed by the service, on SQLite and on a private redis-server;
then the service over real HTTP when its Redis is flushed under load and refilled.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import httpx
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.redis_wire import encode_key
from pipelines.features.repo import feature_store
from pipelines.features.watermark import (
    SAMPLE_KEYS,
    WATERMARK_KEY,
    WATERMARK_TABLE,
    check,
    online_marks,
    read_watermarks,
)
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace
from serving.process import Load, ServiceProcess

from conftest import AS_OF, RedisServer, copy_repo, free_port, prepare

END = (AS_OF + pd.Timedelta(hours=1)).to_pydatetime()


def checked(ws: Workspace, now=END + timedelta(minutes=5)):
    store = feature_store(ws)
    return check(online_marks(store), store.list_feature_views(), now)


def test_materialize_records_what_the_store_should_hold(prepared):
    assert set(checked(prepared).missing()) == {v.name for v in feature_store(prepared).list_feature_views()}
    assert "never materialized" in next(iter(checked(prepared).views.values())).reason
    first = materialize(prepared, incremental=False, end=END)
    assert first.refilled == []  # a full run loads everything anyway
    store = feature_store(prepared)
    marks = read_watermarks(store)
    assert set(marks) == set(first.views)
    for view in store.list_feature_views():  # the key count and sample, from the table with pandas
        table = pd.read_parquet(table_path(prepared, view))
        ts = pd.to_datetime(table[view.batch_source.timestamp_field], utc=True)
        window = table[(ts >= END - view.ttl) & (ts <= END)][view.join_keys].drop_duplicates()
        mark = marks[view.name]
        assert mark.end_time == END and mark.keys == len(window) > 0, view.name
        assert len(mark.sample) == min(SAMPLE_KEYS, len(window))
        keys = set(window.itertuples(index=False, name=None))
        assert all(tuple(key[k] for k in view.join_keys) in keys for key in mark.sample)
    state = checked(prepared)
    assert state.error is None and state.missing() == [] and state.stale() == []
    # identical reruns write identical bytes: an incremental run with nothing new keeps the sample
    raw = online_marks(store).read()
    materialize(prepared, incremental=False, end=END)
    assert materialize(prepared, incremental=True, end=END).refilled == []
    assert online_marks(store).read() == raw


def test_a_store_that_lost_keys_or_everything_is_missing_until_materialize_refills_it(prepared):
    materialize(prepared, incremental=False, end=END)
    store = feature_store(prepared)
    view = store.get_feature_view("teacher_labels")
    lost = read_watermarks(store)[view.name].sample[0]
    pairs = [(key["query_id"], key["item_id"]) for key in read_watermarks(store)[view.name].sample]
    served = OnlineFeatures(prepared).get_online_columns(pairs)
    assert all(v is not None for v in served["expected_grade"])
    if prepared.online == "sqlite":  # one sampled key evicted, then everything gone with the watermark
        with sqlite3.connect(prepared.root / "online.db") as con:
            con.execute(f'DELETE FROM "unisup_{view.name}" WHERE entity_key = ?', (encode_key(lost, ""),))
    else:
        redis.Redis.from_url(prepared.online).delete(encode_key(lost, store.project))
    state = checked(prepared)
    assert state.missing() == ["teacher_labels"] and "1 of" in state.views["teacher_labels"].reason
    if prepared.online == "sqlite":
        with sqlite3.connect(prepared.root / "online.db") as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                con.execute(f'DELETE FROM "{table}"')
        assert WATERMARK_TABLE == "_unisup_watermark"
    else:
        client = redis.Redis.from_url(prepared.online)
        assert client.exists(WATERMARK_KEY)
        client.flushall()
    state = checked(prepared)
    assert set(state.missing()) == {v.name for v in store.list_feature_views()}
    assert "no watermark" in state.views["teacher_labels"].reason
    assert all(v is None for v in OnlineFeatures(prepared).get_online_columns(pairs)["expected_grade"])
    # a plain incremental run loads in full what the store has no watermark for
    report = materialize(prepared, incremental=True, end=END)
    assert sorted(report.refilled) == sorted(report.views)
    assert checked(prepared).missing() == []
    assert OnlineFeatures(prepared).get_online_columns(pairs) == served


def test_stale_when_older_than_the_ttl_or_behind_the_registry(prepared):
    materialize(prepared, incremental=False, end=END)
    store = feature_store(prepared)
    views = store.list_feature_views()
    late = END + max(v.ttl for v in views) + timedelta(hours=1)
    state = checked(prepared, now=late)
    assert sorted(state.stale()) == sorted(v.name for v in views) and state.missing() == []
    assert "ttl" in state.views["teacher_labels"].reason
    view = store.get_feature_view("item_profile")  # a later run recorded in the registry went elsewhere
    store.registry.apply_materialization(view, store.project, END, END + timedelta(hours=2))
    state = checked(prepared)
    assert state.stale() == ["item_profile"] and "registry" in state.views["item_profile"].reason


# ------------------------------------------------------------------ the service, Redis flushed under load

@pytest.fixture(scope="module")
def flushable(tmp_path_factory):
    """A served workspace (index, blend, quick ranker) over its own redis-server, which the test flushes."""
    root = tmp_path_factory.mktemp("watermark")
    with RedisServer.running(tmp_path_factory.mktemp("watermark_redis")) as server:
        ws = prepare(Workspace(root=root / "ws", online=server.url, repo_dir=copy_repo(root / "repo")))
        materialize(ws, incremental=False)
        for args in (["index", "build"], ["rank", "train", "--candidates", "rrf", "--quick", "--epochs", "1"]):
            result = CliRunner().invoke(app, [*cli_args(ws), *args])
            assert result.exit_code == 0, result.output
        srv = ServiceProcess(ws, free_port(), root / "server.log", env={"UNISUP_STORE_CHECK_SECONDS": "1"})
        try:
            srv.wait_ready()
            yield ws, server, srv
        finally:
            srv.stop()


def cli_args(ws: Workspace) -> list[str]:
    return ["--workspace", str(ws.root), "--online", ws.online, "--repo", str(ws.repo_dir)]


def wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def test_a_flushed_redis_degrades_answers_and_readiness_until_materialize_refills_it(flushable):
    ws, server, srv = flushable
    query = ws.lake.read("queries")["query_text"].iloc[0]
    healthy = httpx.post(f"{srv.url}/retrieve", json={"query": query, "k": 30}, timeout=60).json()
    assert healthy["degraded"] is False and healthy["missing_views"] == [] and healthy["stale_views"] == []
    assert any(v is not None for item in healthy["items"] for v in item["features"].values())
    load = Load(srv.url, [("retrieve", {"query": query, "k": 30}), ("search", {"query": query, "k": 10}),
                          ("retrieve", {"query": query, "k": 30})])
    try:
        wait_until(lambda: len(load.answers) >= 6, "answers under load")
        flushed = time.monotonic()
        server.flush()
        t0 = time.monotonic()

        def all_degraded_since(t: float) -> bool:
            recent = load.since(t)
            return len({e for e, _ in recent}) == 2 and all(b["degraded"] and b["missing_views"] for _, b in recent)

        wait_until(lambda: all_degraded_since(time.monotonic() - 1.5), "every answer degraded after FLUSHALL", 15)
        noticed = time.monotonic() - t0
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        meta = httpx.get(f"{srv.url}/metadata").json()
        assert "teacher_labels" in meta["online_views"]["missing"]
        assert "no watermark" in meta["online_views"]["views"]["teacher_labels"]["reason"]
        retrieved = next(b for e, b in reversed(load.since(flushed)) if e == "retrieve" and b["degraded"])
        assert "teacher_labels" in retrieved["missing_views"]
        assert all(item["features"]["expected_grade"] is None for item in retrieved["items"])
        result = CliRunner().invoke(app, [*cli_args(ws), "materialize"])  # plain: refills what has no watermark
        assert result.exit_code == 0, result.output
        t1 = time.monotonic()
        wait_until(lambda: httpx.get(f"{srv.url}/readyz").status_code == 200, "ready again", 15)
        wait_until(lambda: (recent := load.since(time.monotonic() - 1.5)) and not any(b["degraded"] for _, b in recent),
                   "answers healthy again", 15)
        recovered = time.monotonic() - t1
    finally:
        load.join()
    assert load.failures == []
    back = httpx.post(f"{srv.url}/retrieve", json={"query": query, "k": 30}, timeout=60).json()
    assert back["items"] == healthy["items"] and back["missing_views"] == []
    assert httpx.get(f"{srv.url}/metadata").json()["online_views"]["missing"] == []
    print(f"{len(load.answers)} answers, 0 failed; degraded {noticed:.1f} s after FLUSHALL, "
          f"healthy {recovered:.1f} s after materialize")
