"""Apply, materialize and online reads against real Feast, SQLite and a private redis-server."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.consistency import check_consistency
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.repo import feature_store
from pipelines.signals.engagement_stats import RELEVANT_PROBABILITY

from conftest import AS_OF

END = (AS_OF + pd.Timedelta(hours=1)).to_pydatetime()


def online_snapshot(ws) -> dict:
    """Every key and value the online store holds, raw, for before/after comparisons."""
    if ws.online == "sqlite":
        con = sqlite3.connect(ws.root / "online.db")
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        return {t: sorted(con.execute(f'select * from "{t}"').fetchall()) for t in tables}
    client = redis.Redis.from_url(ws.online)
    return {key: client.hgetall(key) for key in client.scan_iter()}


def test_apply_registers_views_services_and_gate(make_workspace):
    from conftest import prepare

    ws = prepare(make_workspace())
    store = feature_store(ws)
    views = {fv.name for fv in store.list_feature_views()}
    pair_keyed = {"teacher_labels", "retrieval_prior", "engagement_stats", "item_profile", "query_profile"}
    assert views == pair_keyed | {"user_stats", "user_brand"}
    assert {e.name for e in store.list_entities()} == {"query", "item", "user", "brand"}
    assert [v.name for v in store.list_on_demand_feature_views()] == ["gated_engagement"]
    training = store.get_feature_service("training")  # rows of (query, item) join no user view
    assert {p.name for p in training.feature_view_projections} == pair_keyed | {"gated_engagement"}
    engagement = store.get_feature_service("engagement")
    assert {p.name for p in engagement.feature_view_projections} == {"user_stats", "user_brand"}
    online = store.get_feature_service("retriever_online")
    assert sum(len(p.features) for p in online.feature_view_projections) == 11
    assert (ws.root / "feature_store.yaml").exists()


def test_materialize_twice_changes_nothing(prepared):
    materialize(prepared, incremental=False, end=END)
    first = online_snapshot(prepared)
    assert sum(len(v) for v in first.values()) > 0
    materialize(prepared, incremental=False, end=END)
    assert online_snapshot(prepared) == first
    materialize(prepared, incremental=True, end=END)
    assert online_snapshot(prepared) == first


def test_online_lookup_is_one_call_for_pairs_and_items(prepared):
    materialize(prepared, incremental=False, end=END)
    client = OnlineFeatures(prepared)
    tl = pd.read_parquet(prepared.features_dir / "teacher_labels.parquet")
    latest = tl.sort_values("event_timestamp").drop_duplicates(["query_id", "item_id"], keep="last")
    sample = latest.head(20)
    pairs = list(zip(sample["query_id"], sample["item_id"])) + [("no-such-query", sample["item_id"].iloc[0])]
    out = client.get_online_features(pairs)
    assert list(out["query_id"]) == [q for q, _ in pairs]
    assert out["expected_grade"].iloc[:20].tolist() == pytest.approx(sample["expected_grade"].tolist())
    # The unknown query has no pair features, but the item's own features still come back.
    assert pd.isna(out["expected_grade"].iloc[-1]) and isinstance(out["title"].iloc[-1], str)
    p_relevant = sample["grade_p2"].to_numpy() + sample["grade_p3"].to_numpy()
    gate = out["is_relevant"].iloc[:20].to_numpy() == (p_relevant >= RELEVANT_PROBABILITY)
    assert gate.all()


def test_consistency_passes_then_catches_a_stale_value(prepared):
    materialize(prepared, incremental=False, end=END)
    report = check_consistency(prepared, n=200)
    assert report.ok, report.mismatches.head()
    # Overwrite one pair's online value behind Feast's back, as a diverging write path would.
    store = feature_store(prepared)
    tl = pd.read_parquet(prepared.features_dir / "teacher_labels.parquet")
    row = tl.sort_values("event_timestamp").iloc[[-1]].copy()
    row["expected_grade"] = row["expected_grade"] + 1.0
    row["event_timestamp"] = row["event_timestamp"] + pd.Timedelta(seconds=1)
    store.write_to_online_store("teacher_labels", row)
    report = check_consistency(prepared, n=10_000)
    bad = report.mismatches
    assert not report.ok
    assert ((bad["query_id"] == row["query_id"].iloc[0]) & (bad["feature"] == "expected_grade")).any()


def test_cli_consistency_exit_codes(prepared):
    materialize(prepared, incremental=False, end=END)
    args = ["--workspace", str(prepared.root), "--online", prepared.online, "--repo", str(prepared.repo_dir)]
    ok = CliRunner().invoke(app, [*args, "consistency", "--n", "100"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["--online", "memcached://x", "consistency"])
    assert bad.exit_code == 2 and "expected 'sqlite' or 'redis://" in " ".join(bad.output.split())
