"""Fast readers on services keyed beyond (query, item): a user view (user_id) and a (user, brand) view
read in the same batched lookup as pair, item and query views.

A small Feast repo of its own (written to a temp dir, so it does not follow feature_repo/): query,
item, user and brand entities; a pair view, an item view, a user view, a (user_id, brand) view and an
on-demand view over the user views that reads the entity columns too; services over all of them,
over the pair and item views only, and over item and user views only (its rows still carry
query_id). Each is materialized into SQLite and into the private Redis, by Feast's writers and by
ours, and the fast readers must equal Feast's own `get_online_features(...).to_df()` (values,
dtypes, column order) for rows with unknown users, unknown brands and unknown pairs (nulls).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.redis_fast import RedisFeatureReader
from pipelines.features.repo import apply, feature_store
from pipelines.features.sqlite_fast import SqliteFeatureReader
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace

from conftest import AS_OF

END = (AS_OF + pd.Timedelta(hours=1)).to_pydatetime()
ALL_KEYS = ("query_id", "item_id", "brand", "user_id")  # search_online's rows


def user_brand_affinity(inputs: pd.DataFrame) -> pd.DataFrame:
    """The on-demand view's udf: reads features of both user views and the brand entity column
    (which online reads pass; Feast's schema inference at apply passes features only)."""
    clicks = inputs["brand_clicks"].to_numpy(dtype="float64", na_value=np.nan)
    sessions = inputs["sessions"].to_numpy(dtype="float64", na_value=np.nan)
    brand = inputs["brand"] if "brand" in inputs else pd.Series("", index=inputs.index)
    return pd.DataFrame({"brand_affinity": clicks / np.maximum(sessions, 1.0),
                         "is_brand_b0": (brand == "b0").to_numpy().astype("float32")}, index=inputs.index)


REPO = '''
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import Float32, Float64, Int64, String

from pipelines.signals.spec import Signal
from test_online_entity_keys import user_brand_affinity

query = Entity(name="query", join_keys=["query_id"], value_type=ValueType.STRING)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
brand = Entity(name="brand", join_keys=["brand"], value_type=ValueType.STRING)
cohort = Entity(name="cohort", join_keys=["cohort"], value_type=ValueType.INT64)


def source(name):
    return FileSource(name=f"{name}_source", path=f"features/{name}.parquet", timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp")


def view(name, entities, schema):
    return FeatureView(name=name, entities=entities, ttl=timedelta(days=30), schema=schema, source=source(name))


pair_stats = view("pair_stats", [query, item], [Field(name="score", dtype=Float32), Field(name="clicks", dtype=Int64)])
item_info = view("item_info", [item], [Field(name="title", dtype=String), Field(name="price", dtype=Float64)])
user_profile = view("user_profile", [user], [Field(name="segment", dtype=String), Field(name="sessions", dtype=Int64),
                                              Field(name="spend", dtype=Float32)])
user_brand = view("user_brand", [user, brand], [Field(name="brand_clicks", dtype=Int64),
                                                Field(name="brand_share", dtype=Float32)])
cohort_item = view("cohort_item", [cohort, item], [Field(name="cohort_rate", dtype=Float64)])
user_brand_odfv = OnDemandFeatureView(
    name="user_brand_affinity",
    sources=[user_profile[["sessions"]], user_brand[["brand_clicks"]]],
    schema=[Field(name="brand_affinity", dtype=Float64), Field(name="is_brand_b0", dtype=Float32)],
    mode="pandas", udf=user_brand_affinity,
    udf_string="from test_online_entity_keys import user_brand_affinity",
)


def _produce(ctx):
    raise NotImplementedError("tables are written by the test")


pair_signal = Signal(pair_stats, producer=_produce)

search_online = FeatureService(name="search_online", features=[
    pair_stats, item_info[["title", "price"]], user_profile[["segment", "spend", "sessions"]], user_brand,
    user_brand_odfv])
pair_only = FeatureService(name="pair_only", features=[pair_stats, item_info])
item_user = FeatureService(name="item_user", features=[item_info[["price"]], user_profile])
int_key = FeatureService(name="int_key", features=[cohort_item, item_info[["title"]]])
'''


def tables(rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Each view's table: a few entities, nulls in every kind of feature, older rows that lose."""
    t = pd.Timestamp(AS_OF)
    queries, items, users, brands = ([f"{p}{i}" for i in range(n)]
                                     for p, n in (("q", 6), ("i", 12), ("u", 5), ("b", 4)))

    def stamped(df: pd.DataFrame, days_back: int = 0) -> pd.DataFrame:
        at = (t - pd.Timedelta(days=days_back)).as_unit("us")
        return df.assign(event_timestamp=at, created_timestamp=at)

    pairs = pd.DataFrame([(q, i) for q in queries for i in items[::2]], columns=["query_id", "item_id"])
    pair_stats = stamped(pairs.assign(score=rng.random(len(pairs)).astype("float32"),
                                      clicks=rng.integers(0, 50, len(pairs))))
    item_info = stamped(pd.DataFrame({"item_id": items, "title": [f"title {i}" for i in items],
                                      "price": rng.random(len(items)) * 100}))
    item_info.loc[3, "title"], item_info.loc[4, "price"] = None, np.nan
    user_profile = stamped(pd.DataFrame({"user_id": users, "segment": ["a", "b", None, "a", "c"],
                                         "sessions": rng.integers(1, 30, len(users)),
                                         "spend": rng.random(len(users)).astype("float32")}))
    user_profile.loc[1, "spend"] = np.nan
    older = stamped(user_profile.assign(segment="old"), days_back=2)  # superseded: never read
    combos = pd.DataFrame([(u, b) for u in users[:4] for b in brands[:3]], columns=["user_id", "brand"])
    user_brand = stamped(combos.assign(brand_clicks=rng.integers(0, 9, len(combos)),
                                       brand_share=rng.random(len(combos)).astype("float32")))
    user_brand.loc[2, "brand_share"] = np.nan
    cohorts = pd.DataFrame([(c, i) for c in (-3, 0, 7, 2**40) for i in items[:5]], columns=["cohort", "item_id"])
    cohort_item = stamped(cohorts.assign(cohort_rate=rng.random(len(cohorts))))
    return {"pair_stats": pair_stats, "item_info": item_info,
            "user_profile": pd.concat([older, user_profile], ignore_index=True), "user_brand": user_brand,
            "cohort_item": cohort_item}


def request_rows(rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """(query_id, item_id, brand, user_id) rows: known and unknown pairs, items and users, brands a
    user has and has not clicked, a brand nobody has, repeats; the shape of one /search request."""
    rows = []
    for _ in range(60):
        rows.append((f"q{rng.integers(0, 7)}", f"i{rng.integers(0, 13)}", f"b{rng.integers(0, 5)}",
                     f"u{rng.integers(0, 6)}"))
    rows += [("q0", "i0", "b0", "no-such-user"), ("q1", "i2", "no-such-brand", "u0"),
             ("q1", "i2", "b1", "u4"),  # a known user without brand rows
             ("q0", "i0", "b0", "u0"), ("", "", "", ""), ("é", "i1", "b✓", "ü")]
    return rows + rows[:4]


@pytest.fixture(scope="module", params=[("sqlite", "feast"), ("sqlite", "auto"), ("redis", "feast"), ("redis", "auto")],
                ids=lambda p: f"{p[0]}-{'feast' if p[1] == 'feast' else 'ours'}-writer")
def ws(request, tmp_path_factory, redis_server) -> Workspace:
    """The repo applied and materialized into one online store by one writer (Feast's, or ours)."""
    online, writer = request.param
    root = tmp_path_factory.mktemp(f"entity_keys_{online}_{writer}")
    (root / "repo").mkdir()
    (root / "repo" / "signals.py").write_text(REPO)
    if online == "redis":
        redis_server.flush()
        online = redis_server.url
    ws = Workspace(root=root / "ws", online=online, repo_dir=root / "repo")
    apply(ws)
    store = feature_store(ws)
    for name, df in tables(np.random.default_rng(0)).items():
        view = store.get_feature_view(name)
        path = table_path(ws, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    views = [v.name for v in store.list_feature_views()]
    if ws.online_type == "sqlite" and writer == "auto":
        # sqlite_fast streams a view in the byte order of its string keys (latest.latest_batches):
        # the INT64-keyed view goes through Feast's writer
        views.remove("cohort_item")
        materialize(ws, incremental=False, end=END, views=["cohort_item"], engine="feast")
    materialize(ws, incremental=False, end=END, views=views, engine=writer)
    return ws


def feast_frame(ws: Workspace, service: str, rows: list[tuple], keys: tuple[str, ...]) -> pd.DataFrame:
    store = feature_store(ws)
    entity_rows = [dict(zip(keys, row)) for row in rows]
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=entity_rows).to_df()


def reader(ws: Workspace, service: str):
    return (RedisFeatureReader if ws.online_type == "redis" else SqliteFeatureReader)(ws, service)


def assert_same_as_feast(ours: pd.DataFrame, feast: pd.DataFrame, entity_columns: tuple[str, ...]) -> None:
    """Equal values and dtypes; the same entity columns first, in order, then the same features (in
    service order here; Feast's order inside a view follows set iteration)."""
    assert list(feast.columns[:len(entity_columns)]) == list(entity_columns)
    assert list(ours.columns[:len(entity_columns)]) == list(entity_columns)
    assert sorted(ours.columns) == sorted(feast.columns)
    pd.testing.assert_frame_equal(ours, feast[list(ours.columns)])


def test_users_and_brands_read_with_the_pairs_in_one_lookup(ws):
    r = reader(ws, "search_online")
    assert r.keys == ALL_KEYS and r.entity_columns == ALL_KEYS
    groups = {g.join_keys: g.positions for g in r.entity_groups}
    assert groups == {("item_id", "query_id"): (1, 0), ("item_id",): (1,), ("user_id",): (3,),
                      ("brand", "user_id"): (2, 3)}
    rows = request_rows(np.random.default_rng(1))
    ours, feast = r.read(rows), feast_frame(ws, "search_online", rows, ALL_KEYS)
    assert_same_as_feast(ours, feast, ALL_KEYS)
    assert list(ours.columns) == [*ALL_KEYS, "score", "clicks", "title", "price", "segment", "spend", "sessions",
                                  "brand_clicks", "brand_share", "brand_affinity", "is_brand_b0"]
    assert r.read_columns(rows) == feast_frame_dict(ws, "search_online", rows)

    by_row = ours.set_index(list(ALL_KEYS)).sort_index()
    unknown_user = by_row.loc[("q0", "i0", "b0", "no-such-user")].iloc[0]
    assert unknown_user[["segment", "spend", "sessions", "brand_clicks", "brand_share", "brand_affinity"]].isna().all()
    assert unknown_user[["score", "title"]].notna().all()  # the pair and the item are still read
    unknown_brand = by_row.loc[("q1", "i2", "no-such-brand", "u0")].iloc[0]
    assert unknown_brand[["brand_clicks", "brand_share", "brand_affinity"]].isna().all()
    assert unknown_brand[["segment", "sessions"]].notna().all()  # the user is known
    assert unknown_brand["is_brand_b0"] == 0.0
    known = by_row.loc[("q0", "i0", "b0", "u0")].iloc[0]
    assert known[["score", "segment", "brand_clicks", "brand_share"]].notna().all() and known["is_brand_b0"] == 1.0
    assert "old" not in set(ours["segment"].dropna())  # the newer user rows won


def feast_frame_dict(ws: Workspace, service: str, rows: list[tuple]) -> dict[str, list]:
    store = feature_store(ws)
    return store.get_online_features(features=store.get_feature_service(service),
                                     entity_rows=[dict(zip(ALL_KEYS, row)) for row in rows]).to_dict()


def test_a_pair_only_service_is_unchanged(ws):
    r = reader(ws, "pair_only")
    assert r.keys == ("query_id", "item_id") == r.entity_columns
    pairs = [row[:2] for row in request_rows(np.random.default_rng(2))]
    ours = r.read(pairs)
    assert_same_as_feast(ours, feast_frame(ws, "pair_only", pairs, ("query_id", "item_id")), ("query_id", "item_id"))
    assert list(ours.columns) == ["query_id", "item_id", "score", "clicks", "title", "price"]
    assert ours["score"].notna().any() and ours["score"].isna().any()


def test_a_service_without_query_views_answers_as_feast_does(ws):
    """Rows still carry query_id first (`keys`), and Feast answers with it although no view of the
    service joins on it: it echoes every field that is some registered entity's join key."""
    r = reader(ws, "item_user")
    assert r.keys == ("query_id", "item_id", "user_id") == r.entity_columns
    rows = [(q, i, u) for q, i, _, u in request_rows(np.random.default_rng(3))]
    ours = r.read(rows)
    assert_same_as_feast(ours, feast_frame(ws, "item_user", rows, r.keys), r.keys)
    with_brand = [(*row, "b0") for row in rows]  # a registered entity's key the service does not read
    feast = feast_frame(ws, "item_user", with_brand, (*r.keys, "brand"))
    assert list(feast.columns[:4]) == [*r.keys, "brand"]  # so rows carry no key the service does not read


def test_an_int64_join_key(ws):
    """A view keyed by an INT64 entity (cohort) with item_id: its key serialized as Feast does."""
    r = reader(ws, "int_key")
    assert r.keys == ("query_id", "item_id", "cohort") == r.entity_columns
    rows = [("q0", f"i{i}", c) for c in (-3, 0, 7, 2**40, 5) for i in range(7)]
    ours = r.read(rows)
    assert_same_as_feast(ours, feast_frame(ws, "int_key", rows, r.keys), r.keys)
    assert ours["cohort_rate"].notna().sum() == 4 * 5 and ours["cohort_rate"].isna().any()


def test_online_features_entry_point(ws):
    fast, plain = OnlineFeatures(ws, "search_online"), OnlineFeatures(ws, "search_online", engine="feast")
    assert fast.reader is not None and plain.reader is None
    assert fast.keys == plain.keys == ALL_KEYS and fast.entity_columns == plain.entity_columns == ALL_KEYS
    rows = request_rows(np.random.default_rng(4))
    ours, theirs = fast.get_online_features(rows), plain.get_online_features(rows)
    assert_same_as_feast(ours, theirs, ALL_KEYS)
    assert fast.get_online_columns(rows) == plain.get_online_columns(rows)
    empty = fast.get_online_features([])
    assert list(empty.columns) == list(plain.get_online_features([]).columns) == list(ours.columns)
    assert list(fast.get_online_columns([])) == list(ours.columns)
    assert OnlineFeatures(ws, "pair_only", engine="feast").keys == ("query_id", "item_id")
    for client in (fast, plain):  # a pair where the service needs a user: refused, not misread
        with pytest.raises(ValueError):
            client.get_online_features([("q0", "i0")])
