"""Every benchmark script's --quick smoke run, as a subprocess against this session's private
redis-server: it exits 0, writes its JSON where --out says (never over benchmarks/results/), and
the JSON has a row for each path it measures, none with an error. No timing is asserted: these
runs share two cores with everything else.

--quick runs each path in the script's own process, so the per-path child processes of a full run
are tested here without Feast: a child's JSON and its own peak RSS come back, a child that fails
is reported with its exception and stderr, and the run then exits 1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"


def load_common():
    """benchmarks/_common.py as a module (benchmarks/ is scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_results() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(RESULTS.glob("*.json"))}


def run_quick(script: str, out: Path, redis_server=None, *args: str, timeout: float = 540) -> dict:
    """`script --quick --out OUT [--redis URL] [ARGS]`; its JSON, after checking it exited 0 and left
    the committed results alone."""
    before = committed_results()
    cmd = [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out), *args]
    if redis_server is not None:
        redis_server.flush()
        cmd += ["--redis", redis_server.url]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, (f"{script} --quick exited {proc.returncode}\n--- stdout:\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr:\n{proc.stderr[-6000:]}")
    assert committed_results() == before
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["failed"] == []
    return data


def assert_rows(rows: list[dict], key: str, expected: list) -> None:
    """One row per expected path, in order, and none with an error."""
    assert [r[key] for r in rows] == expected
    assert [r for r in rows if r.get("error")] == []


def test_bench_materialize_quick(tmp_path, redis_server):
    """Beside the given server, the script's own 3-master cluster: the same writers, the same keys."""
    data = run_quick("bench_materialize.py", tmp_path / "materialize.json", redis_server)
    single = ["ours, dedup on, empty Redis", "ours, dedup on, all rows already stored",
              "ours, dedup off (initial load)", "ours, dedup on, Feast's subset", "plain Feast store.materialize"]
    on_cluster = [single[0], single[1], single[2], single[4]]
    assert_rows(data["runs"], "label", single + [f"cluster: {label}" for label in on_cluster])
    assert all("seconds" in r for r in data["runs"])
    assert [r["written"] for r in data["runs"][5:8]] == [data["rows"], 0, data["rows"]]
    assert data["same_content"] and all(c["identical"] for c in data["same_content"].values())
    assert set(data["cluster_over_single"]["rows_per_s"]) == set(on_cluster)


def test_bench_sqlite_quick(tmp_path):
    data = run_quick("bench_sqlite.py", tmp_path / "sqlite.json")
    assert_rows(data["materialize"], "label", ["ours (sqlite_fast)", "ours, Feast's table",
                                               "plain Feast store.materialize"])
    assert data["identical_to_feast"] is True and data["lookups"]["equal_to_feast_on_20_batches"] is True
    assert set(data["lookups"]["paths"]) == {"ours", "ours, dict of columns (what /retrieve reads)", "feast"}


def test_bench_encoder_quick(tmp_path, tmp_path_factory):
    # the export cache tests/test_encoder_runtime.py fills, if it ran first (else this run exports)
    exports = tmp_path_factory.getbasetemp() / "encoder-exports"
    data = run_quick("bench_encoder.py", tmp_path / "encoder.json", None, "--cache-dir", str(exports))
    assert_rows(data["runs"], "label", ["torch fp32", "torch (unisup)", "onnxruntime fp32", "openvino fp32",
                                        "openvino bf16"])
    for r in data["runs"]:
        assert r["query"]["latency"]["calls"] == data["queries"] and r["catalog"]["titles_per_s"] > 0
        assert r["quality"]["queries_cos_min"] >= 0.999 and r["quality"]["titles_cos_min"] >= 0.999


def test_bench_dataset_quick(tmp_path):
    data = run_quick("bench_dataset.py", tmp_path / "dataset.json")
    assert_rows(data["runs"], "engine", ["pit", "ray", "feast"])
    assert all(len(r["seconds"]) >= 1 and r["rows"] == data["shape"]["sizes"][0] for r in data["runs"])
    ray = data["runs"][1]
    assert ray["workers"] == 2 and ray["ray_workers_seen"] >= 1 and ray["ray_worker_peak_rss_mb"] > 0
    assert data["feast_over_pit"]["rows"] == data["shape"]["sizes"][0]
    assert set(data["by_size"][str(ray["rows"])]["best_seconds"]) == {"pit", "ray-2", "feast"}


ONLINE_PATHS = ["ours -> DataFrame", "ours -> dict of columns", "Feast get_online_features().to_df()"]
ONLINE_LABELS = ONLINE_PATHS + [f"cluster: {label}" for label in ONLINE_PATHS]  # a server, then a 3-master cluster


def test_bench_online_quick(tmp_path, redis_server):
    data = run_quick("bench_online.py", tmp_path / "online.json", redis_server)
    assert_rows(data["runs"], "label", ONLINE_LABELS)
    assert set(data["all_rounds"]) == set(ONLINE_LABELS)
    assert [r for rounds in data["all_rounds"].values() for r in rounds if r.get("error")] == []
    assert all(r["calls"] == data["iterations"] for r in data["runs"])
    assert "gate_udf_p50_ms" in data["runs"][0]  # the gate ran on its real inputs
    assert data["equal_to_feast"] == {"single": True, "cluster": True}
    assert data["redis_keys"]["cluster"] == data["redis_keys"]["single"]
    assert set(data["cluster_target"]["met"]) == set(ONLINE_LABELS[3:])


def test_bench_online_ranker_online_quick(tmp_path, redis_server):
    """/search's lookup: 200 rows of one query and one user, with brands, read with the user views."""
    data = run_quick("bench_online.py", tmp_path / "ranker.json", redis_server, "--service", "ranker_online",
                     "--batch", "200")
    assert data["service"] == "ranker_online" and data["batch"] == 200
    assert data["entity_keys"] == ["query_id", "item_id", "brand", "user_id"]
    assert_rows(data["runs"], "label", ONLINE_LABELS)
    assert all(r["calls"] == data["iterations"] for r in data["runs"])
    assert data["equal_to_feast"] == {"single": True, "cluster": True}
    assert set(data["target"]["met"]) == set(ONLINE_LABELS)


@pytest.mark.slow  # ~90 s on 2 shared cores: a real MiniLM, a BentoML server, Feast
def test_serve_bench_quick(tmp_path, redis_server):
    data = run_quick("serve_bench.py", tmp_path / "serve.json", redis_server)
    assert [lv["concurrency"] for lv in data["levels"]] == [1, 8, 32]
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in data["levels"])
    assert_rows(data["lookup_100_pairs"], "path", ["OnlineFeatures.get_online_columns (served)",
                                                   "OnlineFeatures.get_online_features -> DataFrame",
                                                   "Feast get_online_features(...).to_df()"])


@pytest.mark.slow  # ~3 min: serve_bench's workspace plus a quick ranker, then a 30 s soak
def test_serve_bench_search_quick(tmp_path, redis_server):
    """Both endpoints under load, then the soak's two 15 s windows: the second starts a materialize --full and
    a reload to the other index beside the load; no request fails and both events succeed."""
    data = run_quick("serve_bench.py", tmp_path / "search.json", redis_server, "--endpoint", "search",
                     "--soak-minutes", "0.5")
    assert data["endpoint"] == "search" and data["request"] == {"k": 10, "n": 200}
    assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in data["levels"])
    assert all(lv["stages_ms"]["rank"] > 0 and lv["stages_ms"]["lookup"] > 0 for lv in data["levels"])
    soak = data["soak"]
    assert soak["errors"] == 0 and len(soak["windows"]) == 2
    assert all(w["by_endpoint"]["retrieve"]["calls"] > 0 and w["by_endpoint"]["search"]["calls"] > 0
               for w in soak["windows"])
    event = soak["windows"][1]["event"]
    assert event["materialize_exit"] == 0 and event["reload_status"] == 202 and event["switched_s"] is not None
    assert event["reload_to"].endswith("-hnsw")


@pytest.mark.slow  # ~4.5 min on 2 quiet cores, twice that beside other work: eight steps, run, killed, rerun
@pytest.mark.timeout(1800)
def test_crash_harness_quick(tmp_path, redis_server):
    """One SIGKILL per writing step (the full run, 5 per step, is in benchmarks/results/crash_harness.json):
    every rerun exits 0 and ends equal to the uninterrupted run, with consistency clean after materialize."""
    data = run_quick("crash_harness.py", tmp_path / "crash.json", redis_server, timeout=1500)
    assert [r["step"] for r in data["steps"]] == ["ingest", "signals build", "apply", "materialize (SQLite)",
                                                 "materialize (Redis)", "dataset build", "index build", "train"]
    trials = [t for r in data["steps"] for t in r["trials"]]
    assert len(trials) == 8 and all(t["ok"] and t["rerun_exit"] == 0 and t["differs"] == [] for t in trials)
    assert all(r["state_items"] > 0 for r in data["steps"])


def test_a_failed_child_shows_its_exception_and_the_run_exits_1(tmp_path, capsys):
    common = load_common()
    script = tmp_path / "child.py"
    script.write_text("import sys\nprint('starting', file=sys.stderr)\n"
                      "raise KeyError('grade_p2')\n")
    row = {"label": "ours -> DataFrame", **common.run_child(script, ["x"])}
    assert row["error"] == "exit 1: KeyError: 'grade_p2'"
    assert row["stderr_tail"][0] == "starting" and row["stderr_tail"][-1] == "KeyError: 'grade_p2'"
    failed = common.failures([row, {"label": "ok path", "p50_ms": 1.0}])
    assert failed == ["ours -> DataFrame: exit 1: KeyError: 'grade_p2'"]
    with pytest.raises(SystemExit) as exit_:
        common.finish(tmp_path / "out.json", failed, [row])
    assert exit_.value.code == 1
    assert "KeyError: 'grade_p2'" in capsys.readouterr().err


def test_a_child_over_its_memory_limit_is_stopped_with_the_processes_it_started(tmp_path):
    common = load_common()
    script, pid_file = tmp_path / "child.py", tmp_path / "grandchild.pid"
    script.write_text("import subprocess, sys, time\n"
                      f"p = subprocess.Popen(['sleep', '60'])\nopen({str(pid_file)!r}, 'w').write(str(p.pid))\n"
                      "ballast = bytearray(300 * 2**20)\ntime.sleep(60)\n")
    row = common.run_child(script, [], timeout=50, max_rss_mb=200)
    assert row["error"].startswith("stopped after ") and "(limit 200 MB)" in row["error"]
    grandchild, deadline = int(pid_file.read_text()), time.monotonic() + 5
    while running(grandchild):
        assert time.monotonic() < deadline, "the child's own child outlived it"
        time.sleep(0.05)


def running(pid: int) -> bool:
    """Process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_quick_path_that_raises_is_a_failed_row(tmp_path):
    common = load_common()

    def child(engine: str, rows: str) -> dict:
        assert rows == "100"  # arguments arrive as the command line would pass them
        return {"engine": engine, "p50_ms": 1.0} if engine == "feast" else {}["grade_p2"]

    assert common.run_path(tmp_path / "unused.py", ["feast", 100], child) == {
        "engine": "feast", "p50_ms": 1.0, "peak_rss_mb": None}
    row = common.run_path(tmp_path / "unused.py", ["ours", 100], child)
    assert row["error"] == "raised: KeyError: 'grade_p2'" and row["stderr_tail"][-1] == "KeyError: 'grade_p2'"


def test_a_child_s_json_and_its_own_peak_rss(tmp_path):
    common = load_common()
    script = tmp_path / "child.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport benchmarks._common\n"
                      "print('noise')\nprint('{\"p50_ms\": 1.5}')\n")
    ballast = b"x" * (256 * 2**20)  # resident in this process when the child starts
    row = common.run_child(script, [])
    assert row["p50_ms"] == 1.5 and "error" not in row
    assert 0 < row["peak_rss_mb"] < 150 < len(ballast) / 2**20  # its own peak (numpy), not this process's


def test_quick_runs_never_write_the_committed_results():
    common = load_common()
    assert not common.output_path(None, "bench_online", quick=True).is_relative_to(RESULTS)
    assert common.output_path(None, "bench_online", quick=False) == RESULTS / "bench_online.json"
    for out in ("bench_online", str(RESULTS / "serve.json")):
        with pytest.raises(SystemExit, match="--quick does not write under"):
            common.output_path(out, "bench_online", quick=True)
