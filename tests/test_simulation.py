"""The click simulator and the engagement_stats producer on a small synthetic lake."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.features.gate import RELEVANT_PROBABILITY, gated_engagement
from pipelines.features.repo import load_repo
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.lake import Lake
from pipelines.signals.build import conform
from pipelines.signals.engagement import SNAPSHOTS, engagement_stats
from pipelines.signals.spec import SignalContext
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import EMPTY, EXAMINATION, BM25Ranker, ClickConfig, simulate
from pipelines.workspace import DEFAULT_REPO

from conftest import AS_OF

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
    lake = ctx.lake
    poisoned = Lake(tmp_path / "poisoned")
    for name in ("items", "queries"):
        poisoned.write(name, lake.read(name))
    queries, judgments = lake.read("queries"), lake.read("judgments")
    dev_ids = set(queries.loc[queries["split"] == "dev", "query_id"])
    dev = judgments["query_id"].isin(dev_ids)
    judgments.loc[dev, "relevance"] = 3.0
    extra = judgments[dev].assign(item_id=lake.read("items")["item_id"].iloc[0], judgment_id="poison")
    poisoned.write("judgments", pd.concat([judgments, extra.head(1)], ignore_index=True))
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


def test_point_in_time_join_picks_the_snapshot_of_its_day(table):
    """Daily snapshots differ, so entity rows at different event times get different values
    (as-of join backward within the view's 7-day TTL, the rule Feast applies)."""
    q, i = table.groupby(["query_id", "item_id"])["clicks_30d"].nunique().idxmax()
    pair = table[(table["query_id"] == q) & (table["item_id"] == i)]
    pair = pair.sort_values("event_timestamp").reset_index(drop=True)
    later = int(np.flatnonzero(pair["clicks_30d"] != pair["clicks_30d"].iloc[0])[0])
    entities = pd.DataFrame({"event_timestamp": pair["event_timestamp"].iloc[[0, later]]
                             .reset_index(drop=True) + pd.Timedelta(hours=6)})
    joined = pd.merge_asof(entities, pair, on="event_timestamp", tolerance=pd.Timedelta(days=7))
    assert joined["clicks_30d"].tolist() == pair["clicks_30d"].iloc[[0, later]].tolist()
    assert joined["clicks_30d"].iloc[0] != joined["clicks_30d"].iloc[1]
    stale = entities.assign(event_timestamp=entities["event_timestamp"] + pd.Timedelta(days=30))
    assert pd.merge_asof(stale, pair, on="event_timestamp", tolerance=pd.Timedelta(days=7))[
        "clicks_30d"].isna().all()  # past the TTL: nothing


def test_profiles_and_eval_buckets_read_the_simulated_traffic(ctx):
    """With no traffic in the lake, query_profile's frequency is the simulator's own draw, and eval
    buckets every query (no 'unknown') the way the profile does."""
    from pipelines.evaluation.judgments import query_buckets
    from pipelines.signals.profiles import frequency_bucket, query_profile
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
