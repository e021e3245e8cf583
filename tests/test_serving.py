"""The retriever service over real HTTP: a prepared synthetic workspace, features materialized
into a private redis-server, `unisup index build` (index + blend), then `unisup serve` (which
execs `bentoml serve serving.service:RetrieverService`) in a subprocess, started once for the module.

Redis here is this module's own instance: the fault test stops and restarts it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.dataset import build_dataset
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.produce import build_signals
from pipelines.features.watermark import StoreCheck
from pipelines.index.store import find_index, load_encoder, load_index
from pipelines.settings import Settings
from pipelines.signals.spec import SignalContext
from pipelines.text import normalize_query, query_id
from pipelines.workspace import ConfigError, Workspace
from serving.process import ServiceProcess
from serving.retriever import Timings
from serving.search import LoadedSearch

from conftest import AS_OF, RedisServer, copy_repo, free_port, prepare

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make setup installs it); Playwright downloads no browser


class Server(ServiceProcess):
    """The service under test, with /retrieve and /search shortcuts."""

    def post(self, body=None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/retrieve", json=body, timeout=60, **kwargs)

    def search(self, body=None, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}/search", json=body, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory):
    with RedisServer.running(tmp_path_factory.mktemp("serve_redis")) as server:
        yield server


@pytest.fixture(scope="module")
def ws(tmp_path_factory, redis_srv) -> Workspace:
    root = tmp_path_factory.mktemp("serving")
    ws = prepare(Workspace(root=root / "ws", online=redis_srv.url, repo_dir=copy_repo(root / "repo")))
    build_signals(ws, SignalContext(lake=ws.lake, as_of=AS_OF, seed=0, quick=True, work_dir=ws.cache_dir),
                  only=["user_stats", "user_brand"])  # the same tables, the build's settings recorded
    materialize(ws, incremental=False)
    result = CliRunner().invoke(app, [*cli_args(ws), "index", "build"])
    assert result.exit_code == 0, result.output
    assert "per-query AUC" in result.output
    result = CliRunner().invoke(app, [*cli_args(ws), "rank", "train", "--candidates", "rrf", "--quick",
                                      "--epochs", "1"])  # the ranker /search serves ("ranker")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*cli_args(ws), "engagement", "train", "--rounds", "30", "--threads", "1"])
    assert result.exit_code == 0, result.output  # the pCTR / pCVR /search serves
    return ws


def cli_args(ws: Workspace) -> list[str]:
    return ["--workspace", str(ws.root), "--online", ws.online, "--repo", str(ws.repo_dir)]


@pytest.fixture(scope="module")
def server(ws, tmp_path_factory):
    srv = Server(ws, free_port(), tmp_path_factory.mktemp("serve_log") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def lake_query(ws: Workspace, split: str) -> str:
    """The raw text of the query of `split` with the most judgments (the richest pair features)."""
    queries, judged = ws.lake.read("queries"), ws.lake.read("judgments")
    counts = judged["query_id"].value_counts()
    chosen = queries[queries["split"] == split].assign(n=lambda d: d["query_id"].map(counts).fillna(0))
    return chosen.sort_values(["n", "query_id"], ascending=[False, True])["query_text"].iloc[0]


def test_retrieve_returns_the_index_top_k_blended_with_features(ws, server):
    query = lake_query(ws, "train")
    response = server.post({"query": query, "k": 50})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert len(items) == 50 and body["degraded"] is False
    assert body["query_id"] == query_id(query) and body["query_norm"] == normalize_query(query)
    loaded = load_index(find_index(ws.indexes_dir))
    assert body["versions"]["index"] == loaded.manifest.index_version
    assert body["versions"]["model"] == "minilm-l6-v2" and body["versions"]["feature_service"] == "retriever_online"
    # model scores: cosine of the normalized query and the indexed item vectors, the exact top 50
    encoder = load_encoder(loaded.manifest, ws.models_dir)
    cosine = loaded.index.reconstruct_n(0, loaded.index.ntotal) @ encoder.encode([normalize_query(query)])[0]
    rows = {item: i for i, item in enumerate(loaded.item_ids)}
    got = np.array([item["model_score"] for item in items])
    assert np.allclose(got, cosine[[rows[item["item_id"]] for item in items]], atol=1e-5)
    assert {item["item_id"] for item in items} == set(loaded.item_ids[np.argsort(-cosine)[:50]])
    # the served score, recomputed by hand from blend.json and the response alone (blend.py's formula:
    # sigmoid(intercept + sum_i w_i * z_i), z_i = (t_i(x_i) - mean_i) / scale_i or 0 where x_i is missing,
    # t_i = log1p(max(x, 0)) where flagged), one item and one input at a time
    assert set(items[0]["features"]) == set(OnlineFeatures(ws).feature_names)
    blend = json.loads((loaded.path / "blend.json").read_text())
    assert blend["inputs"][0] == "model_score" and any(blend["log1p"]) and not all(blend["log1p"])
    missing = 0
    for item in items:
        logit = blend["intercept"]
        for name, logged, mean, scale, weight in zip(blend["inputs"], blend["log1p"], blend["mean"],
                                                     blend["scale"], blend["weights"]):
            x = item["model_score"] if name == "model_score" else item["features"][name]
            if x is None:
                missing += 1
                continue  # z = 0: the fitted mean
            t = math.log1p(max(float(x), 0.0)) if logged else float(x)
            logit += weight * (t - mean) / scale
        assert item["score"] == pytest.approx(1.0 / (1.0 + math.exp(-logit)), rel=1e-9, abs=1e-12), item["item_id"]
    assert missing > 0  # some pair without features was scored too
    assert [item["score"] for item in items] == sorted((item["score"] for item in items), reverse=True)
    titles = ws.lake.read("items").set_index("item_id")["title"]
    assert all(item["title"] == titles[item["item_id"]] for item in items)
    assert sum(item["features"]["expected_grade"] is not None for item in items) > 0
    timing = response.headers["server-timing"]
    assert all(f"{stage};dur=" in timing for stage in ("encode", "search", "features", "blend"))


def test_served_features_equal_a_point_in_time_set_at_the_same_time(ws, server, tmp_path):
    """Online (materialized to Redis) and offline (point-in-time join) agree for every returned pair."""
    for split in ("train", "dev"):
        body = server.post({"query": lake_query(ws, split), "k": 100}).json()
        now = pd.Timestamp.now(tz="UTC").floor("us")
        rows = pd.DataFrame({"query_id": body["query_id"], "item_id": [i["item_id"] for i in body["items"]],
                             "event_timestamp": now})
        offline = pd.read_parquet(build_dataset(ws, rows, tmp_path / split, service="retriever_online").path)
        compared = 0
        for item, (_, expected) in zip(body["items"], offline.iterrows()):
            assert item["item_id"] == expected["item_id"]
            for name, served in item["features"].items():
                if pd.isna(expected[name]):
                    assert served is None, (item["item_id"], name, served)
                else:
                    assert served == (expected[name] if isinstance(served, str) else float(expected[name])), (
                        item["item_id"], name, served, expected[name])
                    compared += 1
        assert compared > 100  # real values were compared, not only nulls


def test_query_is_normalized_once_and_k_beyond_the_catalog_returns_it_all(ws, server):
    a = server.post({"query": "  Vinyl   ANGLE  "}).json()
    b = server.post({"query": "vinyl angle"}).json()
    assert a["query_id"] == b["query_id"] and [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert len(a["items"]) == 100  # default k
    everything = server.post({"query": "vinyl angle", "k": 1000}).json()
    assert len(everything["items"]) == len(ws.lake.read("items"))


def test_without_features_the_order_is_the_model_order(server):
    body = server.post({"query": "vinyl angle", "k": 30, "with_features": False}).json()
    assert body["degraded"] is False and all(item["features"] is None for item in body["items"])
    model = [item["model_score"] for item in body["items"]]
    assert model == sorted(model, reverse=True)


def test_concurrent_requests_each_get_their_own_answer(ws, server):
    """Adaptive batching encodes concurrent queries together; no answer may get another's vector."""
    queries = ws.lake.read("queries")["query_text"].head(24).tolist()
    alone = {q: server.post({"query": q, "k": 10, "with_features": False}).json()["items"] for q in queries}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda q: server.post({"query": q, "k": 10, "with_features": False}),
                                 queries * 12))
    assert [r.status_code for r in together] == [200] * len(together)
    assert max(int(r.headers["X-Encode-Batch"]) for r in together) > 1  # they did share forward passes
    for q, response in zip(queries * 12, together, strict=True):
        mine, solo = response.json()["items"], alone[q]
        # the same vector up to bfloat16 noise: the same scores, the same items (a near-tie may swap)
        assert np.allclose([i["model_score"] for i in mine], [i["model_score"] for i in solo], atol=2e-3)
        assert len({i["item_id"] for i in mine} & {i["item_id"] for i in solo}) >= 8


def test_health_readiness_and_metadata(ws, server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    meta = httpx.get(f"{server.url}/metadata").json()
    manifest = load_index(find_index(ws.indexes_dir)).manifest
    assert meta["versions"]["index"] == manifest.index_version
    assert meta["index"]["catalog_hash"] == manifest.catalog_hash and meta["index"]["kind"] == "flat"
    assert meta["blend"]["feature_service"] == "retriever_online" and meta["blend"]["train_rows"] > 0
    assert meta["online_store"] == {"url": ws.online, "ok": True}


LONG = "a" * 1001
BAD = [  # (case, body bytes, content type, status, fragment of the error)
    ("empty query", b'{"query": ""}', "application/json", 400, "at least 1 character"),
    ("whitespace query", b'{"query": " \\t\\n "}', "application/json", 400, "only whitespace"),
    ("query over 1000 chars", f'{{"query": "{LONG}"}}'.encode(), "application/json", 400, "at most 1000"),
    ("k = 0", b'{"query": "drill", "k": 0}', "application/json", 400, "greater than or equal to 1"),
    ("k negative", b'{"query": "drill", "k": -5}', "application/json", 400, "greater than or equal to 1"),
    ("k over 1000", b'{"query": "drill", "k": 1001}', "application/json", 400, "less than or equal to 1000"),
    ("k as string", b'{"query": "drill", "k": "5"}', "application/json", 400, "valid integer"),
    ("k as float", b'{"query": "drill", "k": 5.5}', "application/json", 400, "valid integer"),
    ("query as number", b'{"query": 42}', "application/json", 400, "valid string"),
    ("with_features as string", b'{"query": "drill", "with_features": "yes"}', "application/json", 400,
     "valid boolean"),
    ("missing query", b'{"k": 5}', "application/json", 400, "Field required"),
    ("unknown field", b'{"query": "drill", "top_k": 5}', "application/json", 400, "Extra inputs"),
    ("not an object", b'["drill"]', "application/json", 400, "object"),
    ("not JSON", b"drill", "application/json", 400, "Invalid JSON"),
    ("empty body", b"", "application/json", 400, "Field required"),
    ("invalid UTF-8", b'{"query": "dr\xffill"}', "application/json", 400, "not valid UTF-8"),
    ("lone surrogate", b'{"query": "\\udc00"}', "application/json", 400, ""),
    ("body over 1 MB", b'{"query": "drill", "pad": "' + b"x" * (1 << 20) + b'"}', "application/json", 413,
     "limit"),
    ("form post", b"query=drill", "application/x-www-form-urlencoded", 415, "application/json"),
]


@pytest.mark.parametrize("case, content, ctype, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx_never_a_500(server, case, content, ctype, status, fragment):
    response = httpx.post(f"{server.url}/retrieve", content=content, headers={"content-type": ctype}, timeout=60)
    assert response.status_code == status, response.text
    body = response.json()
    assert "error" in body and fragment in response.text


def test_the_encode_api_bounds_its_input(server):
    """/encode gives the index model's embeddings to other clients; its input is bounded too."""
    ok = httpx.post(f"{server.url}/encode", json={"texts": ["vinyl angle"]}, timeout=60)
    assert ok.status_code == 200 and np.asarray(ok.json()).shape == (1, 384)
    for texts in ([], ["x"] * 65, ["x" * 1001], [3]):
        bad = httpx.post(f"{server.url}/encode", json={"texts": texts}, timeout=60)
        assert bad.status_code == 400 and "error" in bad.json(), (len(texts), bad.text)


def test_a_chunked_body_over_the_limit_is_cut_off(server):
    def chunks():
        yield b'{"query": "drill", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(f"{server.url}/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert server.post({"query": "drill"}).status_code == 200  # and the server is fine


def test_redis_down_degrades_then_recovers(ws, server, redis_srv):
    """Each worker process keeps its own connection and health state: a worker logs "failed" when its
    read fails and "back" on its next good read, so recovery is complete when the counts match."""
    query = lake_query(ws, "train")
    healthy = server.post({"query": query, "k": 40}).json()
    assert healthy["degraded"] is False
    redis.Redis(port=redis_srv.port).save()  # restart must come back with the materialized data
    redis_srv.stop()
    try:
        down = server.post({"query": query, "k": 40})
        assert down.status_code == 200
        body = down.json()
        assert body["degraded"] is True and all(item["features"] is None for item in body["items"])
        assert {i["item_id"] for i in body["items"]} == {i["item_id"] for i in healthy["items"]}
        model = [item["model_score"] for item in body["items"]]
        assert model == sorted(model, reverse=True)
        assert httpx.get(f"{server.url}/metadata").json()["online_store"]["ok"] is False
        server.wait_for_log(lambda log: "online store failed" in log)
    finally:
        redis_srv.start()
    deadline = time.monotonic() + 10
    while True:  # the client reconnects on its own; the first call may still see the old socket
        back = server.post({"query": query, "k": 40}).json()
        log = server.log.read_text()
        if not back["degraded"] and log.count("online store is back") == log.count("online store failed"):
            break
        assert time.monotonic() < deadline, "a worker still degraded 10 s after Redis came back"
        time.sleep(0.1)
    assert back["items"] == healthy["items"]


def test_search_ranks_its_candidates_by_the_value_model(ws, server):
    response = server.search({"query": lake_query(ws, "train"), "k": 10, "n": 50})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert len(items) == 10 and body["candidates"] == 50 and body["degraded"] is False
    assert body["versions"]["ranker"] == "ranker@value" and body["versions"]["candidates"] == "rrf"
    assert body["versions"]["feature_service"] == "ranker_online"
    weights = json.loads((ws.models_dir / "rankers" / "ranker" / "ranker.json").read_text())["value_weights"]
    for item in items:  # value.py's documented sum, recomputed from the response alone
        p = item["relevance"]
        assert p["grade_ge1"] >= p["grade_ge2"] >= p["grade_ge3"]
        assert item["expected_relevance"] == pytest.approx(p["grade_ge1"] + p["grade_ge2"] + p["grade_ge3"], rel=1e-5)
        assert 0 <= item["p_order"] <= item["p_click"] <= 1
        assert item["value"] == pytest.approx(item["expected_relevance"] + weights["click_weight"] * item["p_click"]
                                              + weights["order_weight"] * item["p_order"], rel=1e-5)
        assert item["features"] is None
    assert [i["value"] for i in items] == sorted((i["value"] for i in items), reverse=True)
    timing = response.headers["server-timing"]
    assert all(f"{stage};dur=" in timing for stage in ("retrieve", "features", "lookup", "rank"))


def test_search_reads_the_users_features_in_its_lookup_and_an_unknown_user_gets_the_population_rates(ws, server):
    from pipelines.signals.user_stats import impression_log

    log = impression_log(SignalContext(lake=ws.lake, as_of=AS_OF, seed=0, quick=True, work_dir=ws.cache_dir))
    heavy = str(log["user_id"].value_counts().index[0])
    body = {"query": lake_query(ws, "train"), "k": 20, "n": 50}
    anyone, stranger, known = (server.search(body | extra).json()
                               for extra in ({}, {"user_id": "nobody-we-know"}, {"user_id": heavy}))
    ctr = {name: [i["p_ctr"] for i in answer["items"]] for name, answer in
           (("anyone", anyone), ("stranger", stranger), ("known", known))}
    assert all(0 < p < 1 for p in ctr["anyone"] + ctr["known"])
    assert ctr["stranger"] == ctr["anyone"] and not stranger["degraded"]  # the prior, not an error
    assert ctr["known"] != ctr["anyone"]  # the heavy user's history moves the estimates
    assert [i["item_id"] for i in known["items"]] == [i["item_id"] for i in anyone["items"]]  # ranked alike


def test_a_served_row_equals_the_training_row_of_the_same_pair(ws, server):
    """/search's explained features for a training query and the ranker's training table (point-in-time
    at the same moment, request-time features from the same candidates) agree feature by feature."""
    from pipelines.ranking.config import RankerDataConfig
    from pipelines.ranking.data import training_table

    rows, _ = training_table(ws, RankerDataConfig(candidates="rrf", quick=True))
    query = lake_query(ws, "train")
    body = server.search({"query": query, "k": 20, "n": 200, "explain": True}).json()
    table = rows[rows["query_id"] == body["query_id"]].set_index("item_id")
    assert len(table) > 0, "the query is not among the quick training sample"
    compared = known = 0
    for item in body["items"]:
        expected = table.loc[item["item_id"]]
        for name, served in item["features"].items():
            if pd.isna(expected[name]):
                assert served is None, (item["item_id"], name, served)
            else:
                assert served == pytest.approx(float(expected[name]), rel=1e-5, abs=1e-6), (item["item_id"], name)
                known += not name.startswith("request_")
                compared += 1
    assert compared > 100 and known > 0  # store features were compared, not only request-time ones


def test_training_rows_hold_their_own_queries_share_of_item_popularity(ws, server):
    """The ranker's table counts, per row, the judged pairs item popularity counts and how many of
    them are the row's own query's (the lake's training judgments are the reference); the trainer's
    out-of-query popularity is then the other queries' judgments of the item, and exactly 0 where
    only the row's own query judged it."""
    from pipelines.ranking.config import RankerDataConfig
    from pipelines.ranking.data import ALL_JUDGMENTS, OWN_JUDGMENTS, training_table
    from pipelines.ranking.train import out_of_query_popularity

    rows, _ = training_table(ws, RankerDataConfig(candidates="rrf", quick=True))
    queries, judgments = ws.lake.read("queries"), ws.lake.read("judgments")
    train = judgments[judgments["query_id"].isin(queries.loc[queries["split"] == "train", "query_id"])
                      & judgments["item_id"].isin(ws.lake.read("items")["item_id"])]
    per_pair = train.groupby(["query_id", "item_id"]).size()
    per_item = train.groupby("item_id").size()
    assert (rows[ALL_JUDGMENTS] == len(train)).all()
    own = [per_pair.get((q, i), 0) for q, i in zip(rows["query_id"], rows["item_id"])]
    assert rows[OWN_JUDGMENTS].tolist() == own
    assert (rows.loc[rows["relevance"].notna(), OWN_JUDGMENTS] >= 1).all()
    others = np.array([per_item.get(i, 0) for i in rows["item_id"]]) - np.array(own)
    popularity = out_of_query_popularity(rows)["popularity"].to_numpy()
    known = ~np.isnan(popularity)
    assert known.any() and (others[known] >= 0).all()
    assert np.allclose(popularity[known] * len(train), others[known], atol=1e-6)
    assert (popularity[known][others[known] == 0] == 0).all()


def compare(server, body) -> httpx.Response:
    return httpx.post(f"{server.url}/compare", json=body, timeout=60)


def judged(ws: Workspace, text: str) -> dict[str, float]:
    """The lake's judgments of a query (its raw text), item -> grade: the reference for human grades."""
    qid = query_id(normalize_query(text))
    judgments = ws.lake.read("judgments")
    return dict(zip(*judgments.loc[judgments["query_id"] == qid, ["item_id", "relevance"]].T.to_numpy()))


def test_compare_shows_two_configurations_each_equal_to_its_own_api(ws, server):
    listed = httpx.get(f"{server.url}/compare", timeout=10).json()
    assert {c["name"] for c in listed["configs"]} >= {"bm25", "retrieve", "rrf", "search", "search@lambdamart"}
    query = lake_query(ws, "train")
    left = compare(server, {"query": query, "left": "retrieve", "right": "search", "k": 10, "n": 50}).json()
    retrieved = server.post({"query": query, "k": 10}).json()["items"]
    searched = server.search({"query": query, "k": 10, "n": 50}).json()["items"]
    retrieve_col, search_col = left["columns"]
    assert [i["item_id"] for i in retrieve_col["items"]] == [h["item_id"] for h in retrieved]
    assert [i["score"] for i in retrieve_col["items"]] == pytest.approx([h["score"] for h in retrieved], rel=1e-6)
    assert [i["item_id"] for i in search_col["items"]] == [h["item_id"] for h in searched]
    assert [i["score"] for i in search_col["items"]] == pytest.approx([h["value"] for h in searched], rel=1e-5)
    for item in retrieve_col["items"]:  # the blend's decomposition adds up to its P(relevant)
        assert 1 / (1 + math.exp(-sum(item["explain"]["terms"].values()))) == pytest.approx(item["score"], rel=1e-6)
    for item in search_col["items"]:  # the value model's terms add up to the value
        assert sum(item["explain"]["terms"].values()) == pytest.approx(item["score"], rel=1e-6)
    rrf = compare(server, {"query": query, "left": "bm25", "right": "rrf", "k": 10}).json()["columns"][1]["items"]
    for item in rrf:  # 1 / (60 + rank) per channel, from the ranks shown as the row's origin
        assert item["explain"]["terms"] == pytest.approx({c: 1 / (60 + item["origin"][c]) if c in item["origin"] else 0
                                                          for c in ("bm25", "dense", "char")})
        assert sum(item["explain"]["terms"].values()) == pytest.approx(item["score"], rel=1e-6)


def test_compare_annotates_from_the_store_and_shows_training_judgments_only(ws, server):
    train, dev = lake_query(ws, "train"), lake_query(ws, "dev")
    body = compare(server, {"query": train, "left": "bm25", "right": "search", "k": 20}).json()
    assert body["known_query"] is True and body["degraded"] is False
    rows = {i["item_id"]: i for c in body["columns"] for i in c["items"]}
    feast = OnlineFeatures(ws, "ranker_online", engine="feast")
    reference = feast.get_online_features([(body["query_id"], item, "", "") for item in rows]).set_index("item_id")
    assert feast.keys == ("query_id", "item_id", "brand", "user_id")
    labelled = 0
    for item, row in rows.items():
        if row["teacher"] is None:
            assert pd.isna(reference.loc[item, "expected_grade"])
        else:
            labelled += 1
            assert row["teacher"]["expected_grade"] == pytest.approx(float(reference.loc[item, "expected_grade"]))
    assert labelled > 0
    grades = judged(ws, train)
    shown = {item: row["human_grade"] for item, row in rows.items()}
    expected = {i: grades[i] for i in shown if i in grades}
    assert {i: g for i, g in shown.items() if g is not None} == pytest.approx(expected)
    assert any(g is not None for g in shown.values())
    dev_rows = [i for c in compare(server, {"query": dev, "left": "bm25", "right": "search", "k": 50}).json()["columns"]
                for i in c["items"]]
    assert set(judged(ws, dev)) & {i["item_id"] for i in dev_rows}, "no judged dev item shown: the check is empty"
    assert all(i["human_grade"] is None for i in dev_rows)


COMPARE_BAD = [  # (case, body, fragment)
    ("unknown configuration", {"query": "drill", "left": "nope"}, "is unknown: expected one of"),
    ("k of 0", {"query": "drill", "k": 0}, "greater than or equal to 1"),
    ("n below k", {"query": "drill", "k": 20, "n": 5}, "must be at least k"),
    ("whitespace query", {"query": "  "}, "only whitespace"),
    ("unknown field", {"query": "drill", "top": 3}, "Extra inputs"),
]


@pytest.mark.parametrize("case,body,fragment", COMPARE_BAD, ids=[c[0] for c in COMPARE_BAD])
def test_compare_bad_input_is_a_clear_4xx(server, case, body, fragment):
    response = compare(server, body)
    assert response.status_code == 400 and fragment in response.text, (case, response.text)


def test_the_inspector_page_in_a_real_browser(ws, server, tmp_path):
    """Debian's chromium driven by Playwright: type a query, both columns render, the explain drawer
    shows the JSON API's number, bad input shows the API's 4xx message, nothing leaves 127.0.0.1."""
    from playwright.sync_api import sync_playwright

    query = lake_query(ws, "train")
    expected = compare(server, {"query": query, "left": "bm25", "right": "search", "k": 10}).json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server.url + "/")
        page.fill("#query", query)
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-rendered]")
        for index, column in enumerate(expected["columns"]):
            shown = page.locator(f"#column-{index} li.row").evaluate_all("rows => rows.map(r => r.dataset.item)")
            assert shown == [i["item_id"] for i in column["items"]]
        page.keyboard.press("l")  # the right column (search), its second row, explained
        page.keyboard.press("j")
        page.keyboard.press("e")
        page.wait_for_selector("#drawer:not([hidden])")
        row = expected["columns"][1]["items"][1]
        assert f"score {row['score']:.4f}" in page.inner_text("#drawer")
        page.screenshot(path=tmp_path / "inspector.png")
        paint = page.evaluate("performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
        timings = page.evaluate("window.inspectorTimings")
        page.keyboard.press("Escape")
        page.fill("#k", "0")
        page.locator("#query").press("Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "400" in page.inner_text("#error") and "greater than or equal to 1" in page.inner_text("#error")
        page.set_viewport_size({"width": 390, "height": 800})  # a phone's width: one column under the other
        page.screenshot(path=tmp_path / "inspector-phone.png")
        boxes = [page.locator(f"#column-{i}").bounding_box() for i in (0, 1)]
        assert boxes[1]["y"] > boxes[0]["y"] and boxes[1]["x"] == boxes[0]["x"]
        browser.close()
    assert requested and all(url.startswith(server.url + "/") for url in requested), requested
    print(f"inspector timings (ms): paint {dict(paint)}, api -> rendered {timings}")  # reported, not asserted


SEARCH_BAD = [  # (case, body, fragment): /retrieve's rules hold, plus /search's own bounds
    ("empty query", {"query": ""}, "at least 1 character"),
    ("whitespace query", {"query": "  "}, "only whitespace"),
    ("k over 100", {"query": "drill", "k": 101}, "less than or equal to 100"),
    ("n over 1000", {"query": "drill", "n": 1001}, "less than or equal to 1000"),
    ("n below k", {"query": "drill", "k": 20, "n": 10}, "at least k"),
    ("explain as string", {"query": "drill", "explain": "yes"}, "valid boolean"),
    ("unknown field", {"query": "drill", "top_k": 5}, "Extra inputs"),
    ("empty user", {"query": "drill", "user_id": ""}, "at least 1 character"),
    ("user as number", {"query": "drill", "user_id": 7}, "valid string"),
]


@pytest.mark.parametrize("case, body, fragment", SEARCH_BAD, ids=[b[0] for b in SEARCH_BAD])
def test_search_bad_input_is_a_clear_4xx(server, case, body, fragment):
    response = server.search(body)
    assert response.status_code == 400 and fragment in response.json()["detail"][0]["msg"] + response.text


def test_search_degrades_without_redis_then_recovers(ws, server, redis_srv):
    """Redis down: ranked on request-time features alone (every store feature null), degraded; back
    by itself once Redis returns."""
    query = lake_query(ws, "train")
    healthy = server.search({"query": query, "k": 10, "explain": True}).json()
    assert healthy["degraded"] is False
    redis.Redis(port=redis_srv.port).save()
    redis_srv.stop()
    try:
        down = server.search({"query": query, "k": 10, "explain": True})
        assert down.status_code == 200
        body = down.json()
        assert body["degraded"] is True and len(body["items"]) == 10
        stored = [v for item in body["items"] for n, v in item["features"].items() if not n.startswith("request_")]
        assert stored and all(v is None for v in stored)
    finally:
        redis_srv.start()
    deadline = time.monotonic() + 10
    while (back := server.search({"query": query, "k": 10, "explain": True}).json())["degraded"]:
        assert time.monotonic() < deadline, "/search still degraded 10 s after Redis came back"
        time.sleep(0.1)
    assert back["items"] == healthy["items"]


def test_eval_scores_the_search_stack_and_its_ablations(ws, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [*cli_args(ws), "eval", "--split", "dev", "--out", str(out), "--model", "bm25",
                                      "--model", "search:ranker", "--model", "search:ranker@relevance",
                                      "--model", "search:ranker@lambdamart"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for name in ("search:ranker", "search:ranker@relevance", "search:ranker@lambdamart"):
        mean = report["models"][name]["mean"]
        assert 0 < mean["ndcg@10"] <= mean["ndcg@10_condensed"] <= 1, (name, mean)
    bad = CliRunner().invoke(app, [*cli_args(ws), "eval", "--split", "dev", "--model", "search:nope"])
    assert bad.exit_code == 2 and "no ranker 'nope'" in bad.output


def test_prerank_trains_both_ways_and_each_variant_hands_the_ranker_its_share(ws, tmp_path):
    """`prerank train` (quick) on the ranker's workspace, then `prerank eval` on dev: every variant of
    the issue's table, routing within its budget, a conflict figure; an unknown name is exit 2; then
    bench_prerank --quick times the variants on the same workspace."""
    args = ["--n-retrieve", "300", "--n-keep", "100"]
    result = CliRunner().invoke(app, [*cli_args(ws), "prerank", "train", "--quick", "--epochs", "1", *args])
    assert result.exit_code == 0, result.output
    root = ws.models_dir / "prerankers" / "preranker"
    meta = json.loads((root / "preranker.json").read_text())
    assert sorted(meta["history"]) == ["light-hap", "light-uniform", "strong-hap-band", "strong-hap-groups",
                                       "strong-uniform"]
    assert sorted(p.stem for p in root.glob("*.pt")) == ["light-hap", "light-uniform", "strong-hap", "strong-uniform"]
    choice = meta["strong_hap"]
    assert choice["calib_band_auc"][choice["chosen"]] == max(choice["calib_band_auc"][k] for k in
                                                             ("strong-hap-groups", "strong-hap-band"))
    assert all(meta["rows"]["fit"][g] > 0 for g in ("positive", "exposed", "ranking", "retrieval", "random"))
    assert (root / "conflict.png").stat().st_size > 10_000
    out = tmp_path / "prerank"
    result = CliRunner().invoke(app, [*cli_args(ws), "prerank", "eval", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prerank.json").read_text())
    by_name = {v["variant"]: v for v in report["regimes"]["new"]}
    assert {"no pre-ranking (fusion order)", "light everywhere", "strong everywhere", "uniform, budget 0.2",
            "HAP, budget 0.1", "HAP, budget 0.2", "HAP, budget 0.3"} <= set(by_name)
    for v in report["regimes"]["new"]:
        assert 0 < v["mean"]["ndcg@10"] <= v["mean"]["ndcg@10_condensed"] <= 1, v
        assert 0 <= v["top10_kept"] <= 1
        if v["budget"] is not None:
            assert v["routed_share"] <= v["budget"] + 1e-9, v
    assert by_name["light everywhere"]["routed_share"] == 0
    assert by_name["strong everywhere"]["routed_share"] > 0.5  # every request larger than N, all of it
    bad = CliRunner().invoke(app, [*cli_args(ws), "prerank", "eval", "--name", "nope"])
    assert bad.exit_code == 2 and "no pre-ranker 'nope'" in bad.output
    bench = subprocess.run([sys.executable, "benchmarks/bench_prerank.py", "--quick", "--workspace", str(ws.root),
                            "--online", ws.online, "--repo", str(ws.repo_dir), "--out", str(tmp_path / "bench.json")],
                           capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert bench.returncode == 0, bench.stderr[-3000:]
    timed = {r["variant"]: r for r in json.loads((tmp_path / "bench.json").read_text())["variants"]}
    assert timed["strong everywhere"]["strong_scored_per_query"] == 300
    assert 0 < timed["HAP, budget 0.1"]["strong_scored_per_query"] <= 30

    settings = Settings(workspace=ws.root, online=ws.online, repo=ws.repo_dir, preranker="preranker",
                        prerank_budget=0.2)
    searcher = LoadedSearch(settings)
    query = lake_query(ws, "dev")
    answer = searcher.search(query, k=10, n=100, explain=False, timings=Timings(), store=StoreCheck(datetime.now(UTC)))
    assert answer.versions.preranker == "preranker@0.2" and answer.candidates == 100 and len(answer.items) == 10
    norm = normalize_query(query)
    kept = searcher.stack.prerank.candidates([norm], [query_id(norm)], 100, progress=False)
    assert {i.item_id for i in answer.items} <= set(kept["item_id"])


def test_settings_file_then_environment_then_flags(tmp_path, monkeypatch):
    path = tmp_path / "unisup.yaml"
    path.write_text(f"workspace: {tmp_path / 'a'}\nonline: redis://127.0.0.1:7000/1\ntorch_threads: 2\nlanes: 4\n")
    monkeypatch.setenv("UNISUP_CONFIG", str(path))
    monkeypatch.setenv("UNISUP_TORCH_THREADS", "3")
    settings = Settings.load(lanes=5)
    assert settings.workspace == tmp_path / "a" and settings.online == "redis://127.0.0.1:7000/1"
    assert settings.torch_threads == 3 and settings.encoder_threads == 3  # the environment wins over the file
    assert settings.lanes == 5  # a flag wins over the file
    assert Settings.load(lanes=None).lanes == 4  # None is "not given"
    path.write_text("port: 80\n")
    with pytest.raises(ConfigError, match="port"):
        Settings.load()
    monkeypatch.delenv("UNISUP_CONFIG")
    assert Settings.load().online == "sqlite" and Settings.load().index is None
    with pytest.raises(ConfigError, match="torch_threads = 'many'"):
        monkeypatch.setenv("UNISUP_TORCH_THREADS", "many")
        Settings.load()
    monkeypatch.delenv("UNISUP_TORCH_THREADS")
    assert Settings.load(threads=4, workers=2).encoder_threads == 2  # the machine's share per worker
    for key, bad in (("UNISUP_LANES", "0"), ("UNISUP_WORKERS", "-1"), ("UNISUP_ONLINE_TIMEOUT", "0")):
        monkeypatch.setenv(key, bad)
        with pytest.raises(ConfigError, match=f"{key[7:].lower()} = '{bad}': Input should be greater than 0"):
            Settings.load()
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError, match="expected 'sqlite' or"):
        Settings.load(online="memcached://x")


def test_unisup_serve_refuses_to_start_without_an_index(tmp_path):
    result = CliRunner().invoke(app, ["--workspace", str(tmp_path / "empty"), "serve"])
    assert result.exit_code == 2 and "unisup index build" in result.output


def test_bentofile_builds_a_bento(tmp_path):
    """pyproject.toml's [tool.bentoml.build] is valid: `bentoml build` packs the service code and
    pyproject's dependencies (offline, no lock)."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "."], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (src,) = tmp_path.glob("bentos/unisup/*/src")
    assert (src / "serving" / "service.py").exists() and (src / "pipelines" / "index" / "blend.py").exists()
    requirements = (src.parent / "env" / "python" / "requirements.txt").read_text()
    feast = re.search(r"^feast\[([a-z,]+)\]==0\.67\.0$", requirements, re.MULTILINE)
    assert feast and {"duckdb", "redis"} <= set(feast.group(1).split(",")) and "pydantic-settings" in requirements
