"""The fast SQLite paths against real Feast 0.67, row for row.

Feast is the oracle: `store.materialize` with its own SQLite writer fills one workspace's online.db,
materialize_sqlite another's from the same signal tables, and every table is compared row by row
(entity key, feature name, value bytes, value_text, vector_value, event and created times). The
reader is compared with `get_online_features` on both files. Like tests/test_redis_fast.py, these
gate a Feast upgrade (the layout is Feast's).
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pyarrow as pa
import pytest

from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.produce import view_schema
from pipelines.features.repo import apply, feature_store
from pipelines.features.sqlite_fast import SqliteFeatureReader, connect, database_path, materialize_sqlite, write_view
from pipelines.workspace import Workspace

from conftest import AS_OF, prepare
from test_redis_fast import END, agrees_on_random_requests, edge_tables, feast_materialize, read_equals_feast


def dump(ws: Workspace) -> dict[str, list[tuple]]:
    """Every Feast table of the workspace's online.db, rows sorted by key and feature."""
    store = feature_store(ws)
    with sqlite3.connect(database_path(store)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?",
                                            (f"{store.project}_%",))]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY entity_key, feature_name').fetchall() for n in names}


@pytest.fixture
def two(make_workspace):
    """Two applied SQLite workspaces: Feast writes one ("theirs"), we write the other ("ours")."""
    theirs, ours = make_workspace(name="theirs"), make_workspace(name="ours")
    for ws in (theirs, ours):
        apply(ws)
    return theirs, ours


def test_materialize_writes_the_rows_feast_writes(two):
    theirs, ours = two
    for ws in two:
        edge_tables(ws)  # seeded: the same tables in both
    feast_materialize(theirs)
    stats = materialize_sqlite(ours, end=END, incremental=False, batch_rows=37)  # many batches per view
    expected, got = dump(theirs), dump(ours)
    assert sum(len(rows) for rows in expected.values()) > 100
    assert got == expected
    assert sum(v.rows for v in stats.views.values()) == sum(v.written for v in stats.views.values())
    for view in feature_store(ours).list_feature_views():  # recorded where Feast and the CLI look
        assert view.most_recent_end_time == END
    materialize_sqlite(ours, end=END, incremental=False)
    assert dump(ours) == expected  # a rerun changes nothing


def test_an_older_event_never_overwrites_a_newer_one(two):
    _, ours = two
    store = feature_store(ours)
    view = store.get_feature_view("retrieval_prior")

    def table(stamp, score):
        return pa.Table.from_pylist([{"query_id": "q", "item_id": "i", "event_timestamp": stamp,
                                      "created_timestamp": stamp, "rank_bm25": 1, "rank_dense": 2,
                                      "rank_char": 3, "fusion_score": score, "agreement": 3}],
                                    schema=view_schema(view))

    def score() -> float:
        return OnlineFeatures(ours, "training", engine="feast").get_online_features([("q", "i")])["fusion_score"][0]

    t = AS_OF.to_pydatetime()
    with connect(store) as conn:
        write_view(conn, store, view, table(t, 0.5))
        assert score() == 0.5
        write_view(conn, store, view, table(t - timedelta(days=1), 0.25))
        assert score() == 0.5  # older: kept the newer value
        write_view(conn, store, view, table(t, 0.75))
        assert score() == 0.75  # same instant: the correction wins, as in Feast
        write_view(conn, store, view, table(t + timedelta(seconds=1), 0.125))
        assert score() == 0.125


@pytest.fixture
def realistic(make_workspace):
    """The synthetic lake's signals twice: materialized by Feast into one file, by us into the other."""
    theirs, ours = (prepare(make_workspace(name=name)) for name in ("theirs", "ours"))
    feast_materialize(theirs)
    materialize_sqlite(ours, end=END, incremental=False)
    assert dump(ours) == dump(theirs)
    return theirs, ours


@pytest.mark.parametrize("service", ["retriever_online", "ranker_online", "training"])
def test_reader_equals_feast_on_both_writers_data(realistic, service):
    for ws in realistic:  # the file Feast wrote, then ours
        read_equals_feast(ws, SqliteFeatureReader(ws, service), service)


def test_reader_random_requests_and_the_entry_points(realistic):
    ws = realistic[1]
    client = OnlineFeatures(ws)
    assert isinstance(client.reader, SqliteFeatureReader)  # what `unisup serve` and the CLI use on SQLite
    agrees_on_random_requests(ws, client.get_online_features)
    report = materialize(ws, incremental=True)  # the CLI's path writes through sqlite_fast too
    assert report.views and dump(ws) == dump(realistic[0])
