"""`--engine ray`: Feast's Ray offline store and compute engine against the duckdb engine, and the
producers' model passes on Ray Data against the in-process ones.

One local Ray for the module (2 CPUs, as a command starts it). Point-in-time sets from Feast's
get_historical_features on the Ray store must equal the duckdb engine's frame exactly, dtypes
included, on test_pit's tables; a hypothesis property checks the rules (TTL, ties on created,
nothing from the future) against the same plain-Python oracle; materializing through Feast's Ray
compute engine must leave the same online rows as the duckdb workspace's writer. The teacher's
labelling pass and catalog / query encoding on a Ray Data actor pool (pipelines.ray_data) must give
the in-process labels and vectors exactly.
"""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pandas as pd
import pytest
from feast import FeatureService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_pit import T0, distinct_created, engagement, entity_rows, oracle, random_view, stamp

from pipelines.atomic import write_parquet
from pipelines.features.dataset import build_dataset, feast_historical
from pipelines.features.materialize import materialize
from pipelines.features.pit import historical_features
from pipelines.features.produce import conform, view_schema
from pipelines.features.ray_store import ray_session
from pipelines.features.repo import apply, feature_store
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.lake import Lake
from pipelines.modeling.ray_encoder import RayEncoder
from pipelines.ray_data import RayDataConfig
from pipelines.retrieval import build_channels, search_all, shared_encoder
from pipelines.retrieval.dense import DenseChannel
from pipelines.retrieval.pair_features import PairScorer
from pipelines.signals.spec import SignalContext, table_path
from pipelines.signals.teacher_labels import fitted_teacher
from pipelines.teacher.cascade import TeacherConfig
from pipelines.workspace import Workspace

from conftest import AS_OF, copy_repo

PROPERTY = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """The module's one local Ray, started as a command starts it (ray_session: 2 CPUs, loopback)."""
    with ray_session(Workspace(root=tmp_path_factory.mktemp("ray_session"), offline="ray")):
        yield


@pytest.fixture(scope="module")
def repo(local_ray, tmp_path_factory):
    """One applied workspace, read by both engines."""
    root = tmp_path_factory.mktemp("ray")
    ws = Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo"), offline="ray")
    contents = apply(ws)
    ray_store = feature_store(ws)
    duck = feature_store(replace(ws, offline="duckdb"))
    # one view only, for the properties: the rules are per view, and each view costs a Ray read
    ray_store.apply([FeatureService(name="engagement_only",
                                    features=[ray_store.get_feature_view("engagement_stats")])])
    views = {s.name: ray_store.get_feature_view(s.name) for s in contents.signals}
    return ws, duck, ray_store, views


def write(ws: Workspace, views: dict, frames: dict[str, pd.DataFrame]) -> None:
    for name, view in views.items():
        df = frames.get(name, pd.DataFrame({f.name: [] for f in view_schema(view)}))
        write_parquet(conform(view, df), table_path(ws, view))


def both(repo, entities: pd.DataFrame, service: str = "training") -> pd.DataFrame:
    """Ray's frame, after asserting it equals the duckdb engine's exactly (columns up to the gate's
    inputs, which Feast appends in set order, as in test_pit.both)."""
    _, duck, ray_store, _ = repo
    ours = historical_features(duck, duck.get_feature_service(service), entities)
    theirs = feast_historical(ray_store, ray_store.get_feature_service(service), entities)
    assert sorted(ours.columns) == sorted(theirs.columns)
    pd.testing.assert_frame_equal(theirs[list(ours.columns)], ours)
    return theirs


def test_same_frame_as_duckdb(repo):
    ws, _, _, views = repo
    rng = np.random.default_rng(0)
    queries, items = [f"q{k}" for k in range(6)], [f"i{k}" for k in range(8)]
    pairs = pd.DataFrame({"query_id": rng.choice(queries, 120), "item_id": rng.choice(items, 120)})
    write(ws, views, {
        **{name: random_view(views[name], pairs, rng) for name in ("teacher_labels", "retrieval_prior",
                                                                  "engagement_stats")},
        "item_profile": random_view(views["item_profile"], pd.DataFrame({"item_id": items[:-1] * 2}), rng),
        "query_profile": random_view(views["query_profile"], pd.DataFrame({"query_id": queries[:-1]}), rng),
    })
    events = T0 + pd.to_timedelta(rng.integers(-24, 45 * 24, 300), unit="h")
    rows = [(rng.choice(queries + ["q-unknown"]), rng.choice(items), t) for t in events]
    ents = entity_rows(rows, label=rng.random(300))  # an extra column rides along
    ents = pd.concat([ents, ents.iloc[:40]], ignore_index=True)  # duplicate entity rows: Feast's Ray drops them
    out = both(repo, ents)
    assert len(out) == len(ents)
    assert 0 < out["clicks_30d"].isna().mean() < 1  # some rows within the TTL, some expired or unknown


def test_empty_views_keep_every_row(repo):
    """A view with no rows at all nulls its features; Feast's Ray join would drop every entity row."""
    ws, _, _, views = repo
    eng = pd.DataFrame({"query_id": ["q1"], "item_id": ["i1"]})
    write(ws, views, {"engagement_stats": random_view(views["engagement_stats"], eng, np.random.default_rng(0))
                      .assign(event_timestamp=T0, created_timestamp=T0, clicks_30d=pd.array([5], dtype="Int64"))})
    out = both(repo, entity_rows([("q1", "i1", T0 + pd.Timedelta(days=d)) for d in (1, 8, -1)] * 2))
    assert out["clicks_30d"].tolist()[:3] == [5, None, None] or out["clicks_30d"].iloc[[1, 2]].isna().all()
    assert out["is_relevant"].isna().all() and len(out) == 6


@PROPERTY
@given(stamps=st.lists(stamp, min_size=1, max_size=5), events=st.lists(stamp, min_size=1, max_size=4),
       tie=st.booleans())
def test_property_ray_follows_feast_rules(repo, stamps, events, tie):
    """Latest at or before the event, within the TTL (7 days, inclusive), ties to the greatest created."""
    ws, _, _, views = repo
    if tie:
        stamps = [stamps[0]] * len(stamps)
    created = distinct_created(stamps)[::-1] if tie else distinct_created(stamps)
    write(ws, views, engagement((ws, None, views), stamps, created))
    events = events + [max(stamps) + pd.Timedelta(days=7)]  # exactly at the TTL boundary: kept
    out = both(repo, entity_rows([("q", "i", e) for e in events]), service="engagement_only")
    got = [None if pd.isna(v) else float(v) for v in out["clicks_30d"]]
    assert got == [oracle(stamps, created, e) for e in events]


def test_build_dataset_ray_engine(repo, tmp_path):
    ws, _, _, views = repo
    pairs = pd.DataFrame({"query_id": ["q1", "q2", "q1"], "item_id": ["i1", "i1", "i2"]})
    write(ws, views, {"teacher_labels": random_view(views["teacher_labels"], pairs, np.random.default_rng(3))})
    ents = entity_rows([(q, i, T0 + pd.Timedelta(days=d)) for q, i in pairs.to_numpy() for d in (5, 40)])
    duck = build_dataset(replace(ws, offline="duckdb"), ents, tmp_path / "duckdb", engine="duckdb")
    ray_set = build_dataset(ws, ents, tmp_path / "ray", engine="ray")
    pd.testing.assert_frame_equal(pd.read_parquet(ray_set.path), pd.read_parquet(duck.path))
    assert ray_set.lineage["engine"] == "ray"


def test_materialize_through_ray_engine(repo, tmp_path):
    """Feast's Ray compute engine (ours: ray_store.RayComputeEngine) into SQLite leaves the online rows
    sqlite_fast leaves (duckdb workspace), for tables stamped long before now: Feast's own engine
    filtered by the wall clock minus the TTL and wrote nothing for engagement_stats."""
    _, _, _, views = repo
    rng = np.random.default_rng(5)
    pairs = pd.DataFrame({"query_id": rng.choice(["q1", "q2", "q3"], 40), "item_id": rng.choice(["i1", "i2"], 40)})
    frames = {name: random_view(views[name], pairs, rng) for name in ("teacher_labels", "retrieval_prior",
                                                                     "engagement_stats")}
    frames["item_profile"] = random_view(views["item_profile"], pd.DataFrame({"item_id": ["i1", "i2"] * 3}), rng)
    frames["query_profile"] = random_view(views["query_profile"], pd.DataFrame({"query_id": ["q1", "q2"]}), rng)
    frames["user_stats"] = random_view(views["user_stats"], pd.DataFrame({"user_id": ["u1", "u2"] * 3}), rng)
    frames["user_brand"] = random_view(views["user_brand"], pd.DataFrame({"user_id": ["u1", "u2", "u1"],
                                                                          "brand": ["b1", "b1", "b2"]}), rng)
    end = (T0 + pd.Timedelta(days=31)).to_pydatetime()
    reads = {}
    for offline in ("duckdb", "ray"):
        ws = Workspace(root=tmp_path / offline, repo_dir=copy_repo(tmp_path / f"{offline}_repo"), offline=offline)
        store = feature_store(ws) if apply(ws) else None
        write(ws, {name: store.get_feature_view(name) for name in views}, frames)  # this workspace's paths
        materialize(ws, incremental=False, end=end)
        rows = [{"query_id": q, "item_id": i} for q in ("q1", "q2", "q3", "q9") for i in ("i1", "i2")]
        reads[offline] = store.get_online_features(features=store.get_feature_service("retriever_online"),
                                                   entity_rows=rows).to_df()
    pd.testing.assert_frame_equal(reads["ray"], reads["duckdb"])


# every pass on the pool, cut into several blocks per actor, whatever its size
POOL = RayDataConfig(actors=2, batch_size=64, min_rows=0)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A quick teacher fitted in-process on a small synthetic lake, the lake's items and the pairs
    the producer labels."""
    import torch

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("teacher")
    lake = Lake(root / "lake")
    generate_synthetic(lake, n_items=300, n_queries=90, seed=3, as_of=AS_OF)
    ctx = SignalContext(lake=lake, as_of=AS_OF, quick=True, work_dir=root / "work")
    teacher, pairs, _, _ = fitted_teacher(ctx, TeacherConfig.quick(), Console(stderr=True))
    return teacher, lake.read("items"), pairs


def test_teacher_labels_on_ray_data_equal_in_process(local_ray, teacher_run):
    """The labelling pass with the Ray engine (the features' query encoding and the cross-encoder over
    the escalated pairs on the pool) gives the in-process labels exactly: same stages, same
    probabilities bit for bit, because the actors run the batches the in-process pass runs. bfloat16
    is forced on for the cross-encoder whatever this CPU's default: padding moves it most. Each side
    gets a fresh scorer, so both encode the same queries in one call (a scorer that fitted the teacher
    remembers the fit's query vectors, and float32 ones move by ~1e-7 with their batch-mates)."""
    teacher, items, pairs = teacher_run
    teacher.cross_encoder.bf16 = True
    local = teacher.label(pairs, PairScorer(build_channels(items), items), max_pairs=300)
    on_ray = teacher.label(pairs, PairScorer(build_channels(items, ray=POOL), items), max_pairs=300, ray=POOL)
    assert (local["stage2"] == 2).sum() == 300
    for key in ("stage1", "probs1", "stage2", "probs2"):
        np.testing.assert_array_equal(on_ray[key], local[key], err_msg=key)


def test_chunked_search_on_ray_data_equals_in_process(local_ray, teacher_run):
    """A chunked batch search (the prior's candidate table: search_all) encodes its queries on the pool
    in one pass, chunk by chunk as in-process search encodes them, and gives the same hits exactly,
    bfloat16 on whatever this CPU's default. The encoder keeps its fingerprint, so embedding caches and
    indexes keep their keys. (A whole-input pass, the catalog's, is the one-chunk case: the teacher
    test runs it, float32.)"""
    _, items, _ = teacher_run
    local = replace(shared_encoder(), bf16=True)
    on_ray = RayEncoder.of(local, POOL)
    assert on_ray.fingerprint() == local.fingerprint()
    titles = items["title"].astype(str).tolist()
    vectors = local.encode(titles)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    queries = [f"{t.split()[0]} {t.split()[-1]}".lower() for t in titles[:150]]
    hits = {name: search_all({"dense": DenseChannel(encoder, index, items["item_id"].to_numpy())}, queries,
                             k=10, chunk=32, progress=False)[0]["dense"]
            for name, encoder in (("local", local), ("ray", on_ray))}
    np.testing.assert_array_equal(hits["ray"][0], hits["local"][0])
    np.testing.assert_array_equal(hits["ray"][1], hits["local"][1])
