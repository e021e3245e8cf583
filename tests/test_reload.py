"""Switching index and ranker without downtime (serving/deployment.py), over real HTTP: a synthetic
workspace with two index versions (exact and HNSW, each with its blend) and a quick ranker, the
service started with its default worker processes and POST /admin/reload on, concurrent /retrieve
and /search load while the versions alternate; no request fails and no answer mixes versions.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.dataset import definitions_hash
from pipelines.features.materialize import materialize
from pipelines.features.repo import feature_store
from pipelines.settings import Settings
from pipelines.workspace import Workspace
from serving.deployment import POINTER
from serving.process import Load, ServiceProcess

from conftest import copy_repo, free_port, prepare


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Index "flat" then index "hnsw" (the newest, served at start), a ranker; the service on top."""
    root = tmp_path_factory.mktemp("reload")
    ws = prepare(Workspace(root=root / "ws", online="sqlite", repo_dir=copy_repo(root / "repo")))
    materialize(ws, incremental=False)
    args = ["--workspace", str(ws.root), "--online", ws.online, "--repo", str(ws.repo_dir)]
    for step in (["index", "build"], ["rank", "train", "--candidates", "rrf", "--quick", "--epochs", "1"],
                 ["index", "build", "--kind", "hnsw"]):
        result = CliRunner().invoke(app, [*args, *step])
        assert result.exit_code == 0, result.output
    srv = ServiceProcess(ws, free_port(), root / "server.log", env={"UNISUP_ADMIN_RELOAD": "true"})
    try:
        srv.wait_ready()
        yield ws, srv
    finally:
        srv.stop()


def retrieve_versions(ws: Workspace, kind: str) -> dict:
    """The versions object an answer from this index must carry, read from the index's own files."""
    (path,) = [p.parent for p in ws.indexes_dir.glob("*/manifest.json")
               if json.loads(p.read_text())["kind"] == kind]
    manifest, blend = json.loads((path / "manifest.json").read_text()), json.loads((path / "blend.json").read_text())
    store = feature_store(ws)
    return {"model": manifest["model_version"], "index": path.name, "feature_service": manifest["feature_service"],
            "feature_definitions": definitions_hash(store, store.get_feature_service(manifest["feature_service"]))[:12],
            "blend": blend["fitted"]["created"]}


def wait_until(condition, what: str, timeout: float, srv: ServiceProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}\n{srv.tail(6000)}"
        time.sleep(0.2)


def test_reloads_under_load_switch_every_worker_and_no_answer_fails_or_mixes_versions(served):
    ws, srv = served
    flat, hnsw = retrieve_versions(ws, "flat"), retrieve_versions(ws, "hnsw")
    known = {flat["index"]: flat, hnsw["index"]: hnsw}
    ranker = json.loads((ws.models_dir / "rankers" / "ranker" / "ranker.json").read_text())
    search = {"ranker": "ranker@value", "ranker_created": ranker["created"], "candidates": "rrf",
              "feature_service": "ranker_online",
              "feature_definitions": definitions_hash(feature_store(ws), feature_store(ws).get_feature_service(
                  "ranker_online"))[:12], "preranker": None}
    query = ws.lake.read("queries")["query_text"].iloc[0]
    first = httpx.post(f"{srv.url}/retrieve", json={"query": query, "k": 20}, timeout=60).json()
    assert first["versions"] == hnsw  # the newest index at start
    workers = Settings.load().workers
    assert workers == 2  # the default: a POST reaches one process, the pointer file the others
    load = Load(srv.url, [("retrieve", {"query": query, "k": 20}), ("search", {"query": query, "k": 10, "n": 50}),
                          ("retrieve", {"query": query, "k": 50})])
    switched, seconds = Counter(), []
    try:
        wait_until(lambda: len(load.answers) >= 6, "answers under load", 60, srv)
        for target in (flat, hnsw, flat):
            t0 = time.monotonic()
            response = httpx.post(f"{srv.url}/admin/reload", json={"index": target["index"]}, timeout=30)
            assert response.status_code == 202, response.text  # accepted at once; every worker loads and switches
            assert response.json()["index"] == target["index"]
            switched[target["index"]] += 1
            line, times = f"switched to index {target['index']}, ranker", workers * switched[target["index"]]
            srv.wait_for_log(lambda log, line=line, times=times: log.count(line) >= times, 180)  # each worker's
            seconds.append(time.monotonic() - t0)
            wait_until(lambda done=time.monotonic(), index=target["index"]: (  # answers in flight finish first
                len(last := [b for e, b in load.since(done) if e == "retrieve"][-4:]) == 4) and all(
                b["versions"]["index"] == index for b in last), "answers from the new version", 30, srv)
        for body, status, fragment in (({"index": "no-such-index"}, 404, "'no-such-index'"),
                                       ({"index": "../ws"}, 400, "not an index version"),
                                       ({"index": 5}, 400, "valid string"), ({"top_k": 1}, 400, "Extra inputs"),
                                       ({"ranker": "no-such-ranker"}, 404, "'no-such-ranker'")):
            bad = httpx.post(f"{srv.url}/admin/reload", json=body, timeout=300)
            assert bad.status_code == status and fragment in bad.text, (body, bad.text)
            assert "error" in bad.json()
        assert httpx.post(f"{srv.url}/admin/reload", content=b"{", timeout=60).status_code == 400
        still = httpx.post(f"{srv.url}/retrieve", json={"query": query, "k": 20}, timeout=60).json()
        assert still["versions"] == flat  # the refused reloads switched nothing
    finally:
        load.join()
    assert load.failures == []
    answers = [(endpoint, body["versions"]) for _, endpoint, body in load.answers]
    retrieved = Counter(v["index"] for e, v in answers if e == "retrieve")
    assert all(v in known.values() for e, v in answers if e == "retrieve")  # exactly one consistent set each
    assert retrieved.keys() == known.keys()  # answers came from both versions
    assert all(v == search for e, v in answers if e == "search") and any(e == "search" for e, _ in answers)
    meta = httpx.get(f"{srv.url}/metadata").json()
    deployment = meta["deployment"]
    assert meta["versions"] == flat and deployment["versions"] == flat and deployment["reloads"] == 3
    assert [p["index"] for p in deployment["previous"]] == [hnsw["index"], flat["index"], hnsw["index"]]
    assert deployment["previous"][0]["replaced_at"] == deployment["loaded_at"]
    assert deployment["search_versions"] == search and deployment["reload_error"] is None
    assert json.loads((ws.root / POINTER).read_text())["index"] == flat["index"]  # a restart keeps it
    print(f"{len(answers)} answers ({dict(retrieved)} by index), 0 failed, 0 mixed; every worker switched "
          f"{', '.join(f'{s:.1f}' for s in seconds)} s after each POST")
