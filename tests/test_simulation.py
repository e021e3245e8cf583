"""The click simulator and the engagement_stats producer on a small synthetic lake."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines.features.dataset import build_dataset
from pipelines.features.produce import conform
from pipelines.features.repo import load_repo
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.lake import Lake
from pipelines.signals.engagement_stats import RELEVANT_PROBABILITY, SNAPSHOTS, engagement_stats, gated_engagement
from pipelines.signals.spec import SignalContext, table_path
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import EMPTY, EXAMINATION, BM25Ranker, ClickConfig, simulate
from pipelines.workspace import DEFAULT_REPO, Workspace

from conftest import AS_OF, copy_repo, poison_dev_judgments, prepare

BUSY = ClickConfig(searches_per_query_day=20.0)  # more traffic per query: tight estimates, still fast


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("sim") / "lake")
    generate_synthetic(lake, n_items=1500, n_queries=500, seed=3, as_of=AS_OF, judgments_per_query=10)
    return lake


@pytest.fixture(scope="module")
def ctx(lake, tmp_path_factory) -> SignalContext:
    return SignalContext(lake=lake, as_of=AS_OF, seed=5, work_dir=tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def train(ctx) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = training_queries(ctx)
    return queries, training_judgments(ctx, queries)


@pytest.fixture(scope="module")
def production(ctx, train) -> np.ndarray:
    """BM25's top 10 for the training queries, each query's list complete."""
    top = BM25Ranker.for_catalog(ctx.lake.read("items"))(train[0]["query_text"].tolist())
    assert (top != EMPTY).all(axis=1).mean() > 0.8
    return top


@pytest.fixture(scope="module")
def table(ctx) -> pd.DataFrame:
    return engagement_stats(ctx)


def fixed(queries: pd.DataFrame, top: np.ndarray):
    """A ranker that replays precomputed lists (rows in `queries` order)."""
    row = {text: i for i, text in enumerate(queries["query_text"])}
    return lambda texts: top[[row[t] for t in texts]]


def test_swap_interventions_give_back_the_position_curve(train, production):
    """Joachims et al. (2017) swap intervention: for each query, swap slot 1 with slot k (k spread
    over queries) and replay with the same seed. The same two items are shown at 1 and at k in the
    two runs, so sum(clicks at k) / sum(clicks at 1) estimates examination[k] / examination[1]
    whatever the items' attractiveness; it never reads the simulator's internals."""
    queries, grades = train
    full = (production != EMPTY).all(axis=1)
    queries, top = queries[full].reset_index(drop=True), production[full]
    k = 1 + np.arange(len(queries)) % 9  # 0-based slot swapped with slot 0
    swapped = top.copy()
    rows = np.arange(len(top))
    swapped[rows, 0], swapped[rows, k] = top[rows, k], top[rows, 0]
    logs = [simulate(queries, fixed(queries, t), grades, BUSY, seed=11).events for t in (top, swapped)]
    k_of = dict(zip(queries["query_id"], k + 1))
    both = pd.concat(logs, ignore_index=True)
    both["k"] = both["query_id"].astype(str).map(k_of)
    by = both.groupby(["k", "position"], observed=True)["clicks"].sum()
    for slot in range(2, 11):
        ratio = by[(slot, slot)] / by[(slot, 1)]
        assert ratio == pytest.approx(EXAMINATION[slot - 1] / EXAMINATION[0], rel=0.15), slot


def test_known_attractiveness_gives_back_absolute_examination(train, production):
    """With attractiveness known per shown pair, sum(clicks) / sum(impressions * a) per slot is an
    unbiased ratio estimate of examination[slot] (clicks ~ Binomial(impressions, e * a))."""
    queries, grades = train
    log = simulate(queries, fixed(queries, production), grades, BUSY, seed=12)
    ev = log.events.astype({"query_id": str, "item_id": str})
    ev = ev.merge(log.slots[["query_id", "item_id", "position", "attractiveness"]], how="left")
    expected = (ev["impressions"] * ev["attractiveness"]).groupby(ev["position"]).sum()
    estimate = ev.groupby("position")["clicks"].sum() / expected
    np.testing.assert_allclose(estimate.to_numpy(), EXAMINATION, rtol=0.05)


def test_simulation_is_deterministic_by_seed(train, production):
    queries, grades = train
    ranker = fixed(queries, production)
    a, b = (simulate(queries, ranker, grades, seed=7) for _ in range(2))
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.slots, b.slots)
    c = simulate(queries, ranker, grades, seed=8)
    assert not a.events["clicks"].equals(c.events["clicks"])


def test_some_clicks_land_on_irrelevant_popular_items(train, production):
    """Items of true grade < 2 (judged so, or unjudged at the low prior) still draw clicks, and
    popular ones more: per examination, the top popularity quartile clicks well above the bottom half."""
    queries, grades = train
    log = simulate(queries, fixed(queries, production), grades, seed=3)
    ev = log.events.astype({"query_id": str, "item_id": str}).merge(log.slots, how="left")
    low = ev[ev["grade"] < 2]
    assert low.loc[low["judged"], "clicks"].sum() > 0
    examined = low["impressions"] * np.asarray(EXAMINATION)[low["position"] - 1]
    popular = low["popularity"] >= log.slots["popularity"].quantile(0.75)
    plain = low["popularity"] <= log.slots["popularity"].median()
    rate = {name: low.loc[m, "clicks"].sum() / examined[m].sum() for name, m in
            (("popular", popular), ("plain", plain))}
    assert rate["popular"] > 1.5 * rate["plain"] > 0


def test_gate_removes_clicks_on_items_humans_judged_irrelevant(table, train):
    """Gate with a stand-in teacher that agrees with the humans: P(relevant) = 1 where human >= 2."""
    _, grades = train
    human = grades.groupby(["query_id", "item_id"])["relevance"].mean().rename("human")
    rows = table.join(human, on=["query_id", "item_id"])
    rows["grade_p2"] = np.where(rows["human"].isna(), np.nan, (rows["human"] >= 2).astype(float))
    rows["grade_p3"] = 0.0
    gated = gated_engagement(rows)
    irrelevant = (rows["human"] < 2).to_numpy()
    relevant = (rows["grade_p2"] + rows["grade_p3"] >= RELEVANT_PROBABILITY).to_numpy()
    assert rows.loc[irrelevant, "clicks_30d"].sum() > 0  # there is something to remove
    assert (gated.loc[irrelevant, "gated_clicks_30d"] == 0).all()
    assert (gated.loc[irrelevant, "gated_ctr_30d"] == 0).all()
    np.testing.assert_array_equal(gated.loc[relevant, "gated_clicks_30d"],
                                  rows.loc[relevant, "clicks_30d"].astype("float32"))


def test_producer_never_reads_dev_judgments(ctx, table, tmp_path):
    """A copy of the lake whose dev judgments are poisoned (all 'exact match', plus extra pairs)
    yields the identical table, and no dev query appears in it."""
    poisoned = Lake(tmp_path / "poisoned")
    shutil.copytree(ctx.lake.root, poisoned.root)
    assert poison_dev_judgments(poisoned) > 0
    queries = ctx.lake.read("queries")
    dev_ids = set(queries.loc[queries["split"] == "dev", "query_id"])
    again = engagement_stats(SignalContext(lake=poisoned, as_of=ctx.as_of, seed=ctx.seed,
                                           work_dir=ctx.work_dir))
    pd.testing.assert_frame_equal(table, again)
    assert not set(table["query_id"]) & dev_ids


def test_table_fits_the_view_and_its_windows(table, ctx):
    contents = load_repo(DEFAULT_REPO)
    view = contents.signal("engagement_stats").view
    arrow = conform(view, table, contents.join_keys(view))
    assert arrow.num_rows == len(table) > 0
    assert arrow.schema.field("clicks_30d").type == "int64"
    assert arrow.schema.field("ctr_debiased_30d").type == "float"
    assert not table.duplicated(["query_id", "item_id", "event_timestamp"]).any()
    assert (table["impressions_7d"] <= table["impressions_30d"]).all()
    assert (table["clicks_7d"] <= table["clicks_30d"]).all()
    assert (table["clicks_30d"] <= table["impressions_30d"]).all()
    assert (table["orders_30d"] <= table["carts_30d"]).all() and (table["carts_30d"] <= table["clicks_30d"]).all()
    assert (table["impressions_30d"] > 0).all()
    for col in ("ctr_smoothed_30d", "ctr_debiased_30d"):
        assert table[col].between(0, 1).all()
    stamps = sorted(table["event_timestamp"].unique())
    assert len(stamps) == SNAPSHOTS and stamps[-1] == ctx.as_of
    assert (table["created_timestamp"] == table["event_timestamp"]).all()


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Workspace:
    """A prepared workspace (conftest.prepare: synthetic lake, every signal built, repo applied)."""
    root = tmp_path_factory.mktemp("pit")
    return prepare(Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo")))


def _planted(ws: Workspace) -> tuple[pd.DataFrame, list]:
    """Entity rows around one pair's engagement snapshots, and what each must see, worked out by
    hand from the two tables as written: (snapshot row or None, teacher row or None) per entity row.

    engagement_stats: daily snapshots, TTL 7 days; teacher_labels: v1 at as_of - 14 d, v2 at as_of - 1 d."""
    contents = load_repo(ws.repo_dir)
    eng = pd.read_parquet(table_path(ws, contents.signal("engagement_stats").view))
    teacher = pd.read_parquet(table_path(ws, contents.signal("teacher_labels").view))
    assert eng["event_timestamp"].nunique() > 2
    labelled = set(zip(teacher["query_id"], teacher["item_id"]))
    chosen = None
    for (q, i), rows in eng.sort_values(["query_id", "item_id", "event_timestamp"]).groupby(["query_id", "item_id"]):
        if (q, i) not in labelled:
            continue
        stamps, clicks = rows["event_timestamp"].tolist(), rows["clicks_30d"].tolist()
        for k in range(len(rows) - 1):  # two consecutive days whose values differ
            if stamps[k + 1] - stamps[k] == pd.Timedelta(days=1) and clicks[k] != clicks[k + 1]:
                chosen = q, i, rows.reset_index(drop=True), k
                break
        if chosen:
            break
    assert chosen is not None, "no pair with two different consecutive snapshots"
    q, i, snaps, k = chosen
    first, before, after, last = (snaps.iloc[j] for j in (0, k, k + 1, len(snaps) - 1))
    versions = teacher[(teacher["query_id"] == q) & (teacher["item_id"] == i)].sort_values("event_timestamp")
    assert len(versions) == 2

    def label_at(t: pd.Timestamp):
        seen = versions[versions["event_timestamp"] <= t]  # TTL 365 days: never expires here
        return seen.iloc[-1] if len(seen) else None

    shown = set(eng.loc[eng["query_id"] == q, "item_id"])  # an item q never showed nor had labelled
    unseen_item = next(x for x in sorted(set(teacher["item_id"])) if x not in shown and (q, x) not in labelled)
    us, day = pd.Timedelta(microseconds=1), pd.Timedelta(days=1)
    plan = [
        (i, before["event_timestamp"] + pd.Timedelta(hours=6), before),  # between two snapshots: the earlier
        (i, after["event_timestamp"] - us, before),                     # a microsecond before the next one
        (i, after["event_timestamp"], after),                           # stamped exactly at the event: seen
        (i, last["event_timestamp"] + 7 * day, last),                   # the TTL's last instant: still seen
        (i, last["event_timestamp"] + 7 * day + us, None),              # older than the TTL: null
        (i, first["event_timestamp"] - pd.Timedelta(hours=1), None),    # before the pair's first snapshot
        (unseen_item, before["event_timestamp"] + pd.Timedelta(hours=6), None),  # never shown: null
    ]
    rows = pd.DataFrame({"query_id": q, "item_id": [p[0] for p in plan],
                         "event_timestamp": [p[1] for p in plan]}).astype({"event_timestamp": "datetime64[us, UTC]"})
    return rows, [(p[2], label_at(p[1]) if p[0] == i else None) for p in plan]


@pytest.mark.parametrize("engine", ["duckdb", "feast"])
def test_point_in_time_set_picks_the_snapshot_of_its_day(applied, engine, tmp_path):
    """Both engines of build_dataset against what the planted entity rows must see, worked out from
    the tables by hand: the newest snapshot at or before the event within the 7-day TTL, and the
    gate applied to the teacher release in effect at that time."""
    rows, expected = _planted(applied)
    got = pd.read_parquet(build_dataset(applied, rows, tmp_path / engine, engine=engine).path)
    assert got[["query_id", "item_id"]].to_numpy().tolist() == rows[["query_id", "item_id"]].to_numpy().tolist()
    counts = ("impressions_7d", "clicks_7d", "impressions_30d", "clicks_30d", "carts_30d", "orders_30d")
    for n, (snap, label) in enumerate(expected):
        row = got.iloc[n]
        if snap is None:
            assert row[list(counts)].isna().all() and pd.isna(row["ctr_debiased_30d"]), n
            assert pd.isna(row["gated_clicks_30d"]), n  # no engagement stays null, not gated to 0
        else:
            assert [int(row[c]) for c in counts] == [int(snap[c]) for c in counts], n
            for c in ("ctr_smoothed_30d", "ctr_debiased_30d"):
                assert row[c] == pytest.approx(float(snap[c]), abs=1e-7), (n, c)
            relevant = label is not None and float(label["grade_p2"]) + float(label["grade_p3"]) >= 0.7
            assert row["gated_clicks_30d"] == (snap["clicks_30d"] if relevant else 0.0), n
            assert row["is_relevant"] == int(relevant), n
        if label is None:
            assert pd.isna(row["expected_grade"]), n
        else:
            assert row["teacher_version"] == label["teacher_version"], n
            assert row["expected_grade"] == pytest.approx(float(label["expected_grade"]), abs=1e-7), n
    assert got["clicks_30d"].iloc[0] != got["clicks_30d"].iloc[2]  # the two days really differ


def test_profiles_and_eval_buckets_read_the_simulated_traffic(ctx):
    """With no traffic in the lake, query_profile's frequency is the simulator's own draw, and eval
    buckets every query (no 'unknown') the way the profile does."""
    from pipelines.evaluation.judgments import query_buckets
    from pipelines.signals.query_profile import frequency_bucket, query_profile
    from pipelines.simulation import query_frequency

    queries = ctx.lake.read("queries").assign(frequency=None)
    lake = Lake(ctx.work_dir / "no_traffic_lake")
    for name in ("items", "judgments"):
        lake.write(name, ctx.lake.read(name))
    lake.write("queries", queries)
    profile = query_profile(SignalContext(lake=lake, as_of=AS_OF, seed=0, work_dir=ctx.work_dir))
    drawn = query_frequency(queries.assign(frequency=np.nan), ClickConfig(), seed=0)
    assert (profile["frequency"].to_numpy(dtype=float) == np.rint(drawn)).all()
    assert set(profile["frequency_bucket"]) == {"head", "torso", "tail"}
    buckets = query_buckets(lake, queries["query_id"])
    assert (buckets.to_numpy() == frequency_bucket(profile["frequency"]).to_numpy()).all()
