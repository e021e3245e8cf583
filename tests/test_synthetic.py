"""The synthetic generator: deterministic, canonical schema, Home-Depot-like shape, recoverable truth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.ingest.synthetic import FIRST_ITEM_ID, SyntheticReport, generate_synthetic
from pipelines.lake import TABLES, Lake
from pipelines.text import normalize_query, query_id, query_split

FILES = ("items", "queries", "judgments", "truth")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, SyntheticReport]:
    lake = Lake(tmp_path_factory.mktemp("synthetic"))
    return lake, generate_synthetic(lake, n_items=2000, n_queries=500, seed=7)


def tables(lake: Lake) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(lake.root / f"{name}.parquet") for name in FILES}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    runs = [generate_synthetic(Lake(tmp_path / name), 300, 80, seed=s) for name, s in
            [("a", 1), ("b", 1), ("c", 2)]]
    for name in FILES:
        first, again, other = (run.paths[name].read_bytes() for run in runs)
        assert first == again
        assert first != other


def test_schema_matches_the_lake(generated: tuple[Lake, SyntheticReport]) -> None:
    lake, report = generated
    for name, schema in TABLES.items():
        written = pq.read_schema(report.paths[name])
        assert [(f.name, f.type) for f in written] == [(f.name, f.type) for f in schema]
        assert written.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    truth = pq.read_schema(lake.root / "truth.parquet")
    assert [(f.name, f.type) for f in truth] == [
        ("query_id", pa.string()), ("item_id", pa.string()), ("latent_relevance", pa.float32())]
    assert set(report.paths) == set(FILES)


def test_counts_and_keys(generated: tuple[Lake, SyntheticReport]) -> None:
    lake, report = generated
    t = tables(lake)
    items, queries, judged, truth = (t[name] for name in FILES)
    assert (report.n_items, report.n_queries, report.n_judgments) == (2000, 500, len(judged))
    assert list(items["item_id"]) == [str(FIRST_ITEM_ID + i) for i in range(2000)]
    assert queries["query_id"].is_unique and judged["judgment_id"].is_unique
    assert not judged.duplicated(["query_id", "item_id"]).any()
    assert set(judged["query_id"]) == set(queries["query_id"])
    assert set(judged["item_id"]) <= set(items["item_id"])
    assert set(map(tuple, truth[["query_id", "item_id"]].to_numpy())) == set(
        map(tuple, judged[["query_id", "item_id"]].to_numpy()))
    per_query = judged.groupby("query_id").size()
    assert 5 <= per_query.mean() <= 7 and per_query.min() >= 2
    assert (queries["query_id"] == [query_id(q) for q in queries["query_text"]]).all()
    assert (queries["query_norm"] == [normalize_query(q) for q in queries["query_text"]]).all()
    assert (queries["split"] == [query_split(q) for q in queries["query_text"]]).all()


def test_titles_and_queries_look_like_home_depot(generated: tuple[Lake, SyntheticReport]) -> None:
    lake, _ = generated
    titles, texts = lake.read("items")["title"], lake.read("queries")["query_text"]
    assert titles.str.contains(r"\b[A-Z]{2}-\d{3,}\b").all()  # model numbers like SC-141
    assert titles.str.contains(r"\d+(?:-\d+)?/\d+ in\.|\d+ ft\.").mean() > 0.1  # sizes like 1/2 in., 6 ft.
    assert titles.is_unique
    words = texts.map(lambda q: len(normalize_query(q).split()))
    assert (words <= 2).mean() > 0.2 and (words >= 5).mean() > 0.05  # short head, long tail
    assert texts.str.contains(r"\b[a-z]{2}-?\d{3,}\b").mean() > 0.05  # model-number queries
    vocabulary = set(" ".join(titles).lower().split())
    unknown = texts.map(lambda q: any(w not in vocabulary for w in normalize_query(q).split()))
    assert unknown.mean() > 0.05  # typos and plurals the titles do not contain


def test_grades_are_thirds_within_the_scale(generated: tuple[Lake, SyntheticReport]) -> None:
    relevance = generated[0].read("judgments")["relevance"]
    assert relevance.between(1.0, 3.0).all()
    assert ((relevance * 3 - (relevance * 3).round()).abs() < 0.02).all()
    assert relevance.nunique() == 7


def test_traffic_is_long_tailed(generated: tuple[Lake, SyntheticReport]) -> None:
    frequency = generated[0].read("queries")["frequency"].sort_values(ascending=False)
    assert (frequency >= 1).all()
    assert frequency.head(len(frequency) // 10).sum() > 0.5 * frequency.sum()


def test_judgments_recover_the_truth(generated: tuple[Lake, SyntheticReport]) -> None:
    t = tables(generated[0])
    pairs = t["judgments"].merge(t["truth"], on=["query_id", "item_id"])
    assert pairs["relevance"].corr(pairs["latent_relevance"], method="spearman") > 0.7
    assert pairs["latent_relevance"].between(0, 1).all()
    mixed = pairs.groupby("query_id")["relevance"].agg(lambda r: r.max() >= 2.33 and r.min() <= 1.67)
    assert mixed.mean() > 0.5  # most queries have both relevant and irrelevant judged items


def test_both_splits_are_present(generated: tuple[Lake, SyntheticReport]) -> None:
    share = generated[0].read("queries")["split"].value_counts(normalize=True)
    assert set(share.index) == {"train", "dev"} and 0.1 < share["dev"] < 0.3


def test_progress_and_argument_checks(tmp_path: Path) -> None:
    report = generate_synthetic(Lake(tmp_path), 50, 10, progress=True)
    assert report.n_queries == 10
    with pytest.raises(ValueError):
        generate_synthetic(Lake(tmp_path), 0, 10)


def _large_lake_holds_together(lake: Lake, report: SyntheticReport, n_items: int, n_queries: int) -> None:
    """What must stay true however large the lake: every count, id and key, end to end."""
    assert (report.n_items, report.n_queries) == (n_items, n_queries)
    items = pq.read_table(report.paths["items"], columns=["item_id", "title"])
    assert items["item_id"].to_pylist() == [str(FIRST_ITEM_ID + i) for i in range(n_items)]
    assert len(items["title"].unique()) == n_items  # the model number keeps every title unique
    queries = lake.read("queries")
    assert queries["query_id"].is_unique and queries["query_norm"].is_unique
    judged = pq.read_table(report.paths["judgments"], columns=["query_id", "item_id"]).to_pandas()
    assert len(judged) == report.n_judgments > 5 * n_queries
    assert not judged.duplicated().any()
    assert set(judged["query_id"]) == set(queries["query_id"])
    numbers = judged["item_id"].astype("int64")  # every judged item is a catalog item
    assert numbers.between(FIRST_ITEM_ID, FIRST_ITEM_ID + n_items - 1).all()


def test_large_lake_keeps_every_key_consistent(tmp_path: Path) -> None:
    """Functional only: how fast generation runs is benchmarks' business, not the suite's."""
    lake = Lake(tmp_path)
    report = generate_synthetic(lake, n_items=200_000, n_queries=40_000)
    _large_lake_holds_together(lake, report, 200_000, 40_000)


@pytest.mark.slow
def test_a_million_items_keep_seven_digit_ids_and_unique_titles(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    report = generate_synthetic(lake, n_items=1_000_000, n_queries=200_000)
    _large_lake_holds_together(lake, report, 1_000_000, 200_000)
