"""Online lookups from Redis: redis_fast.RedisFeatureReader vs Feast's get_online_features.

Builds a throwaway workspace whose three pair views hold --rows synthetic pairs (and the item
and query profiles of every id they use), materializes it into a private redis-server, then
times the `retriever_online` service (11 features from 5 views plus the gated_engagement
on-demand view) for --batch pairs per call: 90% pairs that exist, 10% random (mostly missing)
combinations. Each path runs in its own subprocess (so peak RSS is per path; --quick: 2k pairs,
each path in this process, no peak RSS) over the same seeded request sequence: --warmup calls,
then --iterations timed calls. On a shared machine the load swings, so the paths take turns
for --rounds rounds and each path reports its round
with the lowest p50 (every round is in the JSON), plus the median CPU time per call of the
client process (less sensitive to other processes than wall time; excludes redis-server).
Peak RSS is mostly imports and the request list, which every path shares; `rss_after_mb` is the
resident size after the timed calls.

For ours, the p50 of the gated_engagement udf alone (`gate_udf_p50_ms`, the same pandas call
Feast makes per lookup) is reported too: it is most of what remains. Its frames carry the gate's
real inputs as stored online (the gate module's GATE_INPUTS and the engagement features its
on-demand view declares), read for the same pairs.

Paths: ours -> pandas DataFrame (what OnlineFeatures returns), ours -> dict of columns (the same
values without building a frame), and plain Feast `get_online_features(...).to_df()`. Before
timing, ours and Feast's frames are compared on --check batches. A path whose child fails shows
its error and stderr in the table and the JSON, and the script exits 1 (so does a mismatch).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_online.py [--rows N] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    add_run_args,
    failures,
    finish,
    latency_summary,
    machine,
    output_path,
    parse_or_run_child,
    print_table,
    redis_server,
    run_path,
    write_json,
)
from benchmarks.bench_materialize import AS_OF, synthetic_rows

warnings.filterwarnings("ignore")  # Feast's experimental-ODFV and ibis deprecation notices
SERVICE = "retriever_online"


def build(root: Path, online: str, rows: int, seed: int):
    """Apply the repo, write every view's table from the same synthetic pairs, materialize."""
    import contextlib
    import io

    import pyarrow.parquet as pq

    from pipelines.features.redis_fast import materialize_redis
    from pipelines.features.repo import apply, feature_store
    from pipelines.signals.spec import table_path
    from pipelines.workspace import Workspace

    ws = Workspace(root=root, online=online)
    apply(ws)
    store = feature_store(ws)
    for i, view in enumerate(store.list_feature_views()):
        pq.write_table(synthetic_rows(view, rows, seed + i), table_path(ws, view))
    with contextlib.redirect_stdout(io.StringIO()):
        materialize_redis(ws, end=AS_OF, incremental=False, dedup=False)
    return ws


def requests(ws, count: int, batch: int, seed: int) -> list[list[tuple[str, str]]]:
    """`count` request batches: 90% existing pairs, 10% random query x item combinations."""
    import pyarrow.parquet as pq

    from pipelines.features.repo import feature_store
    from pipelines.signals.spec import table_path

    view = feature_store(ws).get_feature_view("teacher_labels")
    t = pq.read_table(table_path(ws, view), columns=["query_id", "item_id"])
    q, it = t["query_id"].to_numpy(zero_copy_only=False), t["item_id"].to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    known = rng.integers(0, len(q), (count, batch))
    rand_q, rand_i = rng.integers(0, len(q), (count, batch)), rng.integers(0, len(q), (count, batch))
    mixed = rng.random((count, batch)) < 0.1
    return [[(q[rand_q[b, j]], it[rand_i[b, j]]) if mixed[b, j] else (q[known[b, j]], it[known[b, j]])
             for j in range(batch)] for b in range(count)]


def caller(engine: str, ws):
    """The call being timed, for one engine."""
    from pipelines.features.redis_fast import RedisFeatureReader
    from pipelines.features.repo import feature_store

    if engine == "feast":
        store = feature_store(ws)
        service = store.get_feature_service(SERVICE)
        return lambda pairs: store.get_online_features(
            features=service, entity_rows=[{"query_id": a, "item_id": b} for a, b in pairs]).to_df()
    reader = RedisFeatureReader(ws, SERVICE)
    return reader.read if engine == "ours" else reader.read_columns


def child(engine: str, root: str, online: str, iterations: str, warmup: str, batch: str, seed: str) -> dict:
    from pipelines.workspace import Workspace

    ws = Workspace(root=Path(root), online=online)
    batches = requests(ws, int(warmup) + int(iterations), int(batch), int(seed))
    call = caller(engine, ws)
    for pairs in batches[:int(warmup)]:
        call(pairs)
    gc.collect()
    times, cpu = [], []
    for pairs in batches[int(warmup):]:
        t0, c0 = time.perf_counter(), time.process_time()
        call(pairs)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    import psutil

    result = {**latency_summary(times), "cpu_p50_ms": round(float(np.median(cpu)) * 1000, 3),
              "rss_after_mb": round(psutil.Process().memory_info().rss / 2**20, 1)}
    if engine == "ours":
        result["gate_udf_p50_ms"] = gate_cost(ws, batches[int(warmup):])
    return result


def gate_inputs() -> list[str]:
    """The columns the gate reads: every feature the gated_engagement view declares as a source
    (the teacher's GATE_INPUTS, then the engagement features; from the gate module, not restated)."""
    from pipelines.signals.engagement_stats import gated_engagement_fv

    return [f.name for src in gated_engagement_fv.source_feature_view_projections.values() for f in src.features]


def gate_cost(ws, batches: list) -> float:
    """p50 of the gated_engagement udf alone on frames shaped like the ones it gets online (the
    same pandas call Feast makes): how much of a lookup is the on-demand view's own code. The
    inputs are read from Redis for the same pairs through the `training` service, which holds
    every feature of the gate's source views."""
    import pandas as pd

    from pipelines.features.redis_fast import RedisFeatureReader
    from pipelines.signals.engagement_stats import gated_engagement

    reader, columns = RedisFeatureReader(ws, "training"), ["query_id", "item_id", *gate_inputs()]
    times = []
    for pairs in batches[:200]:
        values = reader.read_columns(pairs)
        frame = pd.DataFrame({name: values[name] for name in columns})
        t0 = time.perf_counter()
        gated_engagement(frame)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 3)


def check(ws, batches: int, batch: int, seed: int) -> bool:
    """Ours equals Feast's frame (columns, values, dtypes) on `batches` request batches."""
    import pandas as pd

    ours, feast = caller("ours", ws), caller("feast", ws)
    for pairs in requests(ws, batches, batch, seed + 1):
        a, b = ours(pairs), feast(pairs)
        if sorted(a.columns) != sorted(b.columns):
            print(f"columns differ from Feast's: {sorted(a.columns)} vs {sorted(b.columns)}", file=sys.stderr)
            return False
        try:
            pd.testing.assert_frame_equal(a, b[list(a.columns)])
        except AssertionError as exc:
            print(f"values differ from Feast's: {exc}", file=sys.stderr)
            return False
    return True


def best(rounds: list[dict]) -> dict:
    """A path's round with the lowest p50, or its first failed round: a failure is never hidden."""
    return next((r for r in rounds if r.get("error")), None) or min(rounds, key=lambda r: r["p50_ms"])


def _row(r: dict) -> tuple:
    if r.get("error"):
        return (r["label"], r["error"], "", "", "", "", r["peak_rss_mb"])
    return (r["label"], *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_p50_ms")),
            r["peak_rss_mb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="pairs per pair view")
    ap.add_argument("--batch", type=int, default=100, help="pairs per lookup")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--check", type=int, default=20, help="batches compared with Feast")
    ap.add_argument("--rounds", type=int, default=3, help="turns per path; the best p50 is reported")
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "bench_online", quick="2k pairs, 50 calls, 3 batches checked, 1 round, paths in this process")
    a = parse_or_run_child(ap, child, nargs=7)
    if a is None:
        return
    if a.quick:
        a.rows, a.iterations, a.warmup = min(a.rows, 2_000), min(a.iterations, 50), min(a.warmup, 10)
        a.check, a.rounds = min(a.check, 3), 1
    out = output_path(a.out, "bench_online", a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench_online_"))
    runs: dict = {}
    try:
        with redis_server(a.redis, tmp / "redis") as server:
            server.client(0).flushdb()
            t0 = time.perf_counter()
            ws = build(tmp / "ws", server.url(0), a.rows, a.seed)
            print(f"built and materialized {a.rows:,} pairs in {time.perf_counter() - t0:.1f}s")
            equal = check(ws, a.check, a.batch, a.seed)
            paths = (("ours", "ours -> DataFrame"), ("ours-columns", "ours -> dict of columns"),
                     ("feast", "Feast get_online_features().to_df()"))
            for round_ in range(a.rounds):
                for engine, label in paths:
                    print(f"round {round_ + 1}/{a.rounds}: timing {label} ...", flush=True)
                    r = run_path(Path(__file__).resolve(), [engine, str(ws.root), ws.online, str(a.iterations),
                                                            str(a.warmup), str(a.batch), str(a.seed)],
                                 child=child if a.quick else None)
                    runs.setdefault(label, []).append({"engine": engine, "label": label, **r})
            rounds, runs = runs, {label: best(rs) for label, rs in runs.items()}
            keys = server.client().dbsize()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, feast = runs["ours -> DataFrame"], runs["Feast get_online_features().to_df()"]
    ratio = round(feast["p50_ms"] / ours["p50_ms"], 1) if "p50_ms" in feast and "p50_ms" in ours else None
    failed = failures(r for rs in rounds.values() for r in rs)
    if not equal:
        failed.append("ours -> DataFrame differs from Feast's frame")
    result = {"service": SERVICE, "pairs_per_view": a.rows, "batch": a.batch, "iterations": a.iterations,
              "warmup": a.warmup, "quick": a.quick, "redis_keys": keys, "equal_to_feast": equal,
              "runs": list(runs.values()), "all_rounds": rounds, "failed": failed,
              "p50_speedup_vs_feast": ratio, "machine": machine()}
    path = write_json(out, result)
    print_table(f"{a.batch} pairs x {SERVICE} from Redis (p50 speedup vs Feast: {ratio}x; "
                f"equal to Feast: {equal})",
                ["path", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CPU p50 ms", "peak RSS MB"],
                [_row(r) for r in runs.values()])
    finish(path, failed, [r for rs in rounds.values() for r in rs])


if __name__ == "__main__":
    main()
