"""Point-in-time training sets: versions chosen by event time, rows never dropped, lineage."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.dataset import build_dataset

from conftest import AS_OF, prepare


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from pipelines.workspace import Workspace

    from conftest import copy_repo

    root = tmp_path_factory.mktemp("dataset")
    return prepare(Workspace(root=root / "ws", repo_dir=copy_repo(root / "repo")))


def _entities(ws) -> tuple[pd.DataFrame, dict]:
    tl = pd.read_parquet(ws.features_dir / "teacher_labels.parquet")
    eng = pd.read_parquet(ws.features_dir / "engagement_stats.parquet")
    v1_ts, v2_ts = sorted(tl["event_timestamp"].unique())
    version = tl.drop_duplicates("event_timestamp").set_index("event_timestamp")["teacher_version"]
    both = eng.merge(tl[["query_id", "item_id"]].drop_duplicates())  # a pair with both signals
    q, i = both.iloc[0][["query_id", "item_id"]]
    last_eng = eng.loc[(eng.query_id == q) & (eng.item_id == i), "event_timestamp"].max()
    rows = pd.DataFrame([
        (q, i, v2_ts + pd.Timedelta(hours=1)),        # after v2: newest teacher
        (q, i, v1_ts + pd.Timedelta(hours=1)),        # between v1 and v2: the older teacher
        (q, i, v1_ts - pd.Timedelta(hours=1)),        # before any teacher label: null
        ("unknown-query", "unknown-item", AS_OF),     # no features at all: null, still kept
        (q, i, last_eng + pd.Timedelta(days=8)),      # engagement older than its 7-day TTL: null
        (q, i, v2_ts + pd.Timedelta(hours=1)),        # duplicate entity row: kept twice
    ], columns=["query_id", "item_id", "event_timestamp"])
    rows["event_timestamp"] = rows["event_timestamp"].astype("datetime64[us, UTC]")
    return rows, {"v1": version[v1_ts], "v2": version[v2_ts]}


@pytest.mark.parametrize("engine", ["duckdb", "feast"])
def test_point_in_time_versions_and_kept_rows(ws, tmp_path, engine):
    rows, versions = _entities(ws)
    assert versions["v1"] != versions["v2"]
    result = build_dataset(ws, rows, tmp_path / engine, engine=engine)
    df = pd.read_parquet(result.path)
    assert len(df) == len(rows)
    assert df["query_id"].tolist() == rows["query_id"].tolist()
    assert df["teacher_version"].tolist()[:3] == [versions["v2"], versions["v1"], None]
    assert df["teacher_version"].iloc[5] == versions["v2"]
    assert df.iloc[3].drop(["query_id", "item_id", "event_timestamp"]).isna().all() or \
        df.iloc[3][["expected_grade", "fusion_score", "clicks_30d", "title"]].isna().all()
    assert pd.isna(df["clicks_30d"].iloc[4]) and not pd.isna(df["clicks_30d"].iloc[0])
    assert pd.isna(df["gated_clicks_30d"].iloc[4])


def test_lineage_records_what_the_set_came_from(ws, tmp_path):
    rows, _ = _entities(ws)
    path = tmp_path / "entities.parquet"
    rows.to_parquet(path)
    result = build_dataset(ws, path, tmp_path / "out")
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage == result.lineage
    assert lineage["feature_service"] == "training" and lineage["rows"] == len(rows)
    assert set(lineage["feature_views"]) >= {"teacher_labels", "gated_engagement", "item_profile"}
    assert len(lineage["definitions_sha256"]) == 64
    assert set(lineage["sources"]) == {"teacher_labels", "retrieval_prior", "engagement_stats",
                                       "item_profile", "query_profile"}
    assert lineage["entities"]["rows"] == len(rows) and len(lineage["entities"]["sha256"]) == 64
    assert 0 < lineage["null_rate"]["expected_grade"] < 1
    again = build_dataset(ws, path, tmp_path / "again").lineage
    assert again["definitions_sha256"] == lineage["definitions_sha256"]
    assert again["sources"] == lineage["sources"]


@pytest.mark.parametrize("content, message", [
    ("query_id,item_id\nq,1\n", "missing columns ['event_timestamp']"),
    ("query_id,item_id,event_timestamp\nq,1,yesterday-ish\n", "'event_timestamp' is not a timestamp"),
    ("query_id,item_id,event_timestamp\nq,,2026-01-01\n", "row 1, field 'item_id' is empty"),
])
def test_bad_entity_files_get_a_clear_error(ws, tmp_path, content, message):
    bad = tmp_path / "entities.csv"
    bad.write_text(content)
    args = ["--workspace", str(ws.root), "--repo", str(ws.repo_dir)]
    result = CliRunner().invoke(app, [*args, "dataset", "build", "--entities", str(bad),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()) and "entities.csv" in result.output
