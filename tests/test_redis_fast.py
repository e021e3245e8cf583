"""The fast Redis paths against real Feast 0.67 and a private redis-server, byte for byte.

Feast is the oracle throughout: its protobuf conversion for encoders, its own Redis writer
(`online_write_batch`, fed the way `feast materialize` feeds it) for write_view, `store.materialize`
for materialize_redis and `get_online_features` for the reader. Databases are compared as raw
keys, fields and values. These tests are the gate for upgrading Feast: the fast paths reproduce
its Redis layout and call its private hooks (pipelines/compat.py), so compat.TESTED moves to a new
Feast version only once they pass on it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.features import redis_wire as wire
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.produce import view_schema
from pipelines.features.redis_fast import RedisFeatureReader, materialize_redis, write_view
from pipelines.features.repo import apply, feature_store
from pipelines.features.watermark import WATERMARK_KEY
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace

from conftest import AS_OF, prepare

END = (AS_OF + pd.Timedelta(hours=1)).to_pydatetime()
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def db_url(server, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def dump(client: redis.Redis) -> dict:
    """Every key of a Redis db with its raw hash (field -> value bytes)."""
    keys = [k for k in client.scan_iter(count=1000) if k != WATERMARK_KEY]  # unisup's own record, not Feast's
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    return dict(zip(keys, pipe.execute()))


def feast_write(store, view, table: pa.Table) -> None:
    """What `feast materialize` does with selected rows: pandas round trip, proto rows, Redis."""
    table = pa.Table.from_pandas(table.to_pandas(), preserve_index=False)
    join_keys = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
    rows = _convert_arrow_to_proto(table, view, join_keys)
    store._get_provider().online_write_batch(store.config, view, rows, progress=None)


def feast_oracle(arr: pa.Array, value_type: ValueType) -> list[bytes]:
    """Feast's materialize conversion of one column (through the pandas backend) to bytes."""
    col = pa.Table.from_pandas(pa.table({"c": arr}).to_pandas(), preserve_index=False)["c"]
    protos = python_values_to_proto_values(col.to_numpy(zero_copy_only=False), value_type)
    return [p.SerializeToString() for p in protos]


# ------------------------------------------------------------------ encoders vs protobuf

COLUMNS = {
    ValueType.FLOAT: (pa.float32(), st.floats(width=32)),
    ValueType.DOUBLE: (pa.float64(), st.floats()),
    ValueType.INT64: (pa.int64(), st.integers(-(2**62), 2**62)),
    ValueType.INT32: (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    ValueType.STRING: (pa.string(), st.text()),
    ValueType.BOOL: (pa.bool_(), st.booleans()),
}


@given(st.sampled_from(sorted(COLUMNS, key=str)).flatmap(
    lambda vt: st.tuples(st.just(vt), st.lists(st.none() | COLUMNS[vt][1], min_size=1, max_size=40))))
@settings(max_examples=300, deadline=None)
def test_value_encoding_is_feasts(case):
    value_type, values = case
    arr = pa.array(values, COLUMNS[value_type][0])
    got = wire.encode_values(arr, value_type).to_pylist()
    assert got == feast_oracle(arr, value_type)
    for data in got:
        expected = feast_value_type_to_python_type(Value.FromString(data), value_type)
        decoded = wire.decode_value(data, value_type)
        assert decoded == expected or (math.isnan(decoded) and math.isnan(expected))


@given(st.lists(st.integers(-(2**40), 2**45), min_size=1, max_size=50),
       st.lists(st.tuples(st.text(), st.text()), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_timestamps_and_entity_keys_are_feasts(micros, ids):
    got = wire.encode_timestamps(np.array(micros, dtype=np.int64)).to_pylist()
    for us, data in zip(micros, got):
        ts = Timestamp()
        ts.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us))
        assert data == ts.SerializeToString()
        assert wire.timestamp_nanos(data) == us * 1000
    types = {"query_id": ValueType.STRING, "item_id": ValueType.STRING}
    cols = {"query_id": pa.array([q for q, _ in ids]), "item_id": pa.array([i for _, i in ids])}
    keys = wire.encode_entity_keys(cols, types, "unisup").to_pylist()
    for (q, i), key in zip(ids, keys):
        proto = EntityKey(join_keys=["query_id", "item_id"],
                          entity_values=[Value(string_val=q), Value(string_val=i)])
        assert key == serialize_entity_key(proto, 3) + b"unisup"
        assert key == wire.encode_key({"query_id": q, "item_id": i}, "unisup")


# ------------------------------------------------------------------ write_view vs Feast's writer

@pytest.fixture
def pair_ws(make_workspace, redis_server):
    """An applied workspace on db 1 (ours) plus a second store handle on db 0 (Feast's)."""
    redis_server.flush()
    ours = make_workspace(online=db_url(redis_server, 1))
    apply(ours)
    theirs = Workspace(root=ours.root, online=db_url(redis_server, 0), repo_dir=ours.repo_dir)
    return ours, theirs, redis.Redis(port=redis_server.port, db=1), redis.Redis(port=redis_server.port, db=0)


def table_strategy(view):
    """Rows of `view` with few distinct keys and stamps, so duplicates and exact ties happen."""
    values = {ValueType.FLOAT: st.floats(width=32), ValueType.INT64: st.integers(-(2**60), 2**60),
              ValueType.STRING: st.text(max_size=12)}
    stamp = st.integers(0, 5).map(lambda d: AS_OF - pd.Timedelta(days=d))
    row = st.fixed_dictionaries({
        "query_id": st.sampled_from(["q1", "q2", "é"]), "item_id": st.sampled_from(["i1", "", "i3"]),
        "event_timestamp": stamp, "created_timestamp": stamp,
        **{f.name: st.none() | values[f.dtype.to_value_type()] for f in view.features}})
    return st.lists(row, min_size=1, max_size=30).map(
        lambda rows: pa.Table.from_pylist(rows, schema=view_schema(view)))


@pytest.mark.parametrize("view_name", ["teacher_labels", "item_profile"])
def test_write_view_writes_what_feast_writes(pair_ws, view_name):
    ours, theirs, mine, feasts = pair_ws
    store_ours, store_feast = feature_store(ours), feature_store(theirs)
    view = store_ours.get_feature_view(view_name)

    @given(st.lists(table_strategy(view), min_size=1, max_size=3), st.sampled_from([4, 10_000]))
    @SLOW
    def check(tables, batch_size):
        mine.flushdb()
        feasts.flushdb()
        for table in tables:  # later tables meet what earlier ones stored: Feast's dedup applies
            feast_write(store_feast, view, table)
            write_view(mine, "unisup", view, table, batch_size=batch_size)
            assert dump(mine) == dump(feasts)

    check()


def test_older_or_equal_event_time_never_overwrites(pair_ws):
    ours, _, mine, _ = pair_ws
    view = feature_store(ours).get_feature_view("retrieval_prior")

    def table(stamp, score):
        return pa.Table.from_pylist([{"query_id": "q", "item_id": "i", "event_timestamp": stamp,
                                      "created_timestamp": stamp, "rank_bm25": 1, "rank_dense": 2,
                                      "rank_char": 3, "fusion_score": score, "agreement": 3}],
                                    schema=view_schema(view))

    t2 = AS_OF.to_pydatetime()
    assert write_view(mine, "unisup", view, table(t2, 0.5)) == 1
    stored = dump(mine)
    assert write_view(mine, "unisup", view, table(t2 - timedelta(days=1), 0.9)) == 0
    assert write_view(mine, "unisup", view, table(t2, 0.9)) == 0  # same instant: Feast skips too
    assert dump(mine) == stored
    assert write_view(mine, "unisup", view, table(t2 - timedelta(days=1), 0.9), dedup=False) == 1
    assert dump(mine) != stored  # the documented opt-out (Feast's skip_dedup) does overwrite
    assert write_view(mine, "unisup", view, table(t2 + timedelta(seconds=1), 0.5)) == 1


def test_key_ttl_and_error_replies(pair_ws):
    ours, _, mine, _ = pair_ws
    view = feature_store(ours).get_feature_view("query_profile")
    row = {"query_id": "q", "event_timestamp": AS_OF, "created_timestamp": AS_OF, "query_text": "x",
           "query_tokens": 1, "frequency": 2, "frequency_bucket": "tail"}
    write_view(mine, "unisup", view, pa.Table.from_pylist([row], schema=view_schema(view)), key_ttl_seconds=500)
    (key,) = list(mine.scan_iter())
    assert 0 < mine.ttl(key) <= 500
    mine.delete(key)
    mine.set(key, b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        write_view(mine, "unisup", view, pa.Table.from_pylist([row], schema=view_schema(view)), dedup=False)
    assert mine.ping()  # the pool hands out a healthy connection after the failed pipeline


# ------------------------------------------------------------------ materialize vs feast materialize

def edge_tables(ws: Workspace, seed: int = 0) -> None:
    """Signal tables full of edge cases: window boundaries, near-ties, nulls, NaN, unicode."""
    store = feature_store(ws)
    rng = np.random.default_rng(seed)
    for view in store.list_feature_views():
        n, ttl = 400, view.ttl
        event = pd.Series(END - pd.to_timedelta(rng.integers(-2 * 86400, ttl.total_seconds() + 2 * 86400, n), unit="s"))
        event.iloc[:2] = [END - ttl, END]  # exactly on both window ends (Feast includes both)
        df = pd.DataFrame({"query_id": rng.choice(["q1", "q2", "q3", "ü", ""], n),
                           "item_id": rng.choice(["i1", "i2", "i3", "i4", "长"], n),
                           "user_id": rng.choice(["u1", "u2", "ü"], n),  # user and (user, brand) views
                           "brand": rng.choice(["b1", "b2", ""], n),
                           "event_timestamp": event,
                           # distinct per row, so Feast's (unstable) sort has no full ties to break
                           "created_timestamp": event + pd.to_timedelta(rng.permutation(n), unit="s")})
        for f in view.features:
            vt = f.dtype.to_value_type()
            vals = {ValueType.FLOAT: rng.normal(size=n).astype(np.float32),
                    ValueType.INT64: rng.integers(-(2**60), 2**60, n),
                    ValueType.STRING: np.array([f"v{x}✓" if x else "" for x in rng.integers(0, 9, n)],
                                               dtype=object)}[vt]
            col = pd.Series(vals, dtype=object)
            col[rng.random(n) < 0.15] = None
            if vt == ValueType.FLOAT:
                col[rng.random(n) < 0.05] = np.nan
            df[f.name] = col
        pq.write_table(pa.Table.from_pandas(df[view_schema(view).names], schema=view_schema(view),
                                            preserve_index=False), table_path(ws, view))


def feast_materialize(ws: Workspace) -> None:
    store = feature_store(ws)
    for view in store.list_feature_views():
        store.materialize(start_date=END - view.ttl, end_date=END, feature_views=[view.name])


def test_materialize_is_byte_identical_to_feast(pair_ws):
    ours, theirs, mine, feasts = pair_ws
    edge_tables(ours)
    feast_materialize(theirs)
    stats = materialize_redis(ours, end=END, incremental=False)
    assert dump(mine) == dump(feasts) and len(dump(mine)) > 20
    assert sum(v.written for v in stats.views.values()) == sum(v.rows for v in stats.views.values())
    for view in feature_store(ours).list_feature_views():  # recorded where Feast and the CLI look
        assert view.most_recent_end_time == END


def test_materializing_twice_changes_nothing(pair_ws):
    ours, _, mine, _ = pair_ws
    edge_tables(ours)
    materialize_redis(ours, end=END, incremental=False)
    first = dump(mine)
    again = materialize_redis(ours, end=END, incremental=False)
    assert dump(mine) == first and sum(v.written for v in again.views.values()) == 0


def test_incremental_picks_up_only_newer_rows(make_workspace, redis_server):
    """Two workspaces, same tables: Feast's materialize_incremental vs ours, step by step."""
    redis_server.flush()
    now = datetime.now(UTC).replace(microsecond=0)
    e1, e2 = now - timedelta(hours=6), now
    ws = {"feast": make_workspace(online=db_url(redis_server, 0), name="f"),
          "ours": make_workspace(online=db_url(redis_server, 1), name="o")}
    view_name = "engagement_stats"
    for w in ws.values():
        apply(w)
    view = feature_store(ws["ours"]).get_feature_view(view_name)

    def rows(stamps: list[datetime], value: int) -> pa.Table:
        return pa.Table.from_pylist([
            {"query_id": f"q{k}", "item_id": "i", "event_timestamp": t, "created_timestamp": t,
             **{f.name: value for f in view.features if f.dtype.to_value_type() == ValueType.INT64}}
            for k, t in enumerate(stamps)], schema=view_schema(view))

    def step(table: pa.Table, end: datetime) -> None:
        for w in ws.values():
            pq.write_table(table, table_path(w, feature_store(w).get_feature_view(view_name)))
        feature_store(ws["feast"]).materialize_incremental(end_date=end, feature_views=[view_name])
        materialize_redis(ws["ours"], views=[view_name], end=end)
        assert dump(redis.Redis(port=redis_server.port, db=1)) == dump(redis.Redis(port=redis_server.port, db=0))

    old = rows([e1 - timedelta(hours=2), e1 - timedelta(hours=1)], 1)
    step(old, e1)
    assert feature_store(ws["ours"]).get_feature_view(view_name).most_recent_end_time == e1
    before = dump(redis.Redis(port=redis_server.port, db=1))
    assert len(before) == 2
    # q0 gets a newer row; q1 a row older than e1 that the first run never saw: only q0 moves.
    newer = pa.concat_tables([old, rows([e1 + timedelta(hours=1)], 7),
                              rows([e1 - timedelta(minutes=5)] * 2, 9).slice(1)])
    step(newer, e2)
    after = dump(redis.Redis(port=redis_server.port, db=1))
    changed = [k for k in after if after[k] != before.get(k)]
    assert len(changed) == 1 and b"q0" in changed[0]


# ------------------------------------------------------------------ reader vs get_online_features

def request_pairs(ws: Workspace, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Known pairs, pairs of known items and queries that were never scored, unknown ids, repeats."""
    tl = pd.read_parquet(table_path(ws, feature_store(ws).get_feature_view("teacher_labels")))
    known = list(zip(tl["query_id"], tl["item_id"]))
    queries, items = sorted(set(tl["query_id"])), sorted(set(tl["item_id"]))
    pairs = [known[i] for i in rng.integers(0, len(known), 60)]
    picks = zip(rng.integers(0, len(queries), 30), rng.integers(0, len(items), 30))
    pairs += [(queries[i], items[j]) for i, j in picks]
    pairs += [("no-such-query", items[0]), (queries[0], "no-such-item"), ("nq", "ni")]
    return pairs + pairs[:5]


@pytest.fixture
def realistic(make_workspace, redis_server):
    """The synthetic lake's signals, materialized by Feast into db 0 and by us into db 1."""
    redis_server.flush()
    ours = prepare(make_workspace(online=db_url(redis_server, 1)))
    theirs = Workspace(root=ours.root, online=db_url(redis_server, 0), repo_dir=ours.repo_dir)
    feast_materialize(theirs)
    materialize_redis(ours, end=END, incremental=False)
    assert dump(redis.Redis(port=redis_server.port, db=1)) == dump(redis.Redis(port=redis_server.port, db=0))
    return ours, theirs


def read_equals_feast(ws: Workspace, reader, service: str) -> pd.DataFrame:
    """`reader.read` of request_pairs equals Feast's get_online_features of `service` (the same
    columns, values and dtypes); the frame read, for further checks."""
    pairs = request_pairs(ws, np.random.default_rng(1))
    store = feature_store(ws)
    extra = {}  # a service reading user views: rows of known and unknown users and brands
    if "user_id" in reader.keys:
        known = pd.read_parquet(ws.features_dir / "user_brand.parquet", columns=["user_id", "brand"]).iloc[0]
        extra = {"user_id": [known["user_id"], "nobody"], "brand": [known["brand"], ""]}
    rows = [{"query_id": q, "item_id": i} | {k: v[n % len(v)] for k, v in extra.items()}
            for n, (q, i) in enumerate(pairs)]
    ours = reader.read([tuple(row[k] for k in reader.keys) for row in rows])
    feast = store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_df()
    assert sorted(ours.columns) == sorted(feast.columns)
    pd.testing.assert_frame_equal(ours, feast[list(ours.columns)])
    assert ours.iloc[-8:-5].isna().any().any()  # the unknown-id rows come back with nulls
    return ours


@pytest.mark.parametrize("service", ["retriever_online", "training"])
def test_reader_equals_feast_on_both_writers_data(realistic, service):
    for ws in realistic:  # db 1 we wrote, db 0 Feast wrote
        ours = read_equals_feast(ws, RedisFeatureReader(ws, service), service)
        assert {"is_relevant", "gated_ctr_30d"} <= set(ours.columns)
        pair_missing = ours["expected_grade"].isna() & ours["title"].notna()  # item known, pair not
        assert pair_missing.any() and ours["expected_grade"].notna().any()


def agrees_on_random_requests(ws: Workspace, read) -> None:
    """`read(pairs)` equals Feast's get_online_features of retriever_online on random requests:
    stored pairs, and arbitrary text ids (unknown, empty, unicode), repeats included."""
    store = feature_store(ws)
    service = store.get_feature_service("retriever_online")
    pool = request_pairs(ws, np.random.default_rng(2))

    random_pair = st.tuples(st.text(max_size=4), st.text(max_size=4))
    @given(st.lists(st.sampled_from(pool) | random_pair, min_size=1, max_size=40))
    @SLOW
    def check(pairs):
        feast = store.get_online_features(features=service, entity_rows=[{"query_id": q, "item_id": i}
                                                                         for q, i in pairs]).to_df()
        ours = read(pairs)
        pd.testing.assert_frame_equal(ours, feast[list(ours.columns)])

    check()


def test_reader_random_requests(realistic):
    agrees_on_random_requests(realistic[0], RedisFeatureReader(realistic[0]).read)


def test_lead_entry_points_use_the_fast_paths(realistic, redis_server):
    ours, _ = realistic
    client = OnlineFeatures(ours)
    assert isinstance(client.reader, RedisFeatureReader)
    assert OnlineFeatures(ours, engine="feast").reader is None
    pairs = request_pairs(ours, np.random.default_rng(3))
    fast, plain = client.get_online_features(pairs), OnlineFeatures(ours, engine="feast").get_online_features(pairs)
    pd.testing.assert_frame_equal(fast, plain[list(fast.columns)])
    before = dump(redis.Redis(port=redis_server.port, db=1))
    report = materialize(ours, incremental=False, end=END)
    assert report.views and dump(redis.Redis(port=redis_server.port, db=1)) == before
    materialize(ours, incremental=False, end=END, engine="feast")
    assert dump(redis.Redis(port=redis_server.port, db=1)) == before


@given(st.lists(st.none() | st.integers(-(2**40), 2**45).map(
    lambda us: wire.encode_timestamps(np.array([us], dtype=np.int64))[0].as_py()) | st.binary(max_size=12)))
@settings(max_examples=300, deadline=None)
def test_batch_timestamp_decoding_matches_one_by_one(values):
    """Valid encodings, absent values and junk: the vectorized decoder agrees with the scalar one."""
    def scalar(v):
        try:
            return wire.timestamp_nanos(v)
        except IndexError:  # truncated varint: both must fail the same way
            return "error"

    expected = [scalar(v) for v in values]
    if "error" in expected:
        with pytest.raises(IndexError):
            wire.timestamps_nanos(values)
    else:
        assert wire.timestamps_nanos(values).tolist() == expected
