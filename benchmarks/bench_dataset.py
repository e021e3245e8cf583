"""Point-in-time training sets at production size: the duckdb engine (pipelines.features.pit),
Feast on our Ray store (pipelines.features.ray_store) at 1 and 2 Ray workers, and plain Feast.

Builds a throwaway workspace with seeded synthetic signal tables shaped like production (three
pair views of --pair-rows rows each over several snapshots, --items item profiles, --queries
query profiles) and entity rows, then times the `training` service at each --sizes entity-row
count (default 1M) with:
  * pit: `historical_features`, the duckdb engine (--repeat calls);
  * ray: Feast's get_historical_features on the workspace's Ray offline store, the call
    `build_dataset(engine="ray")` makes, in a local Ray of N CPUs (ray_session(cpus=N)) for each
    N of --workers (default 1 2); --ray-repeat calls, the first on cold workers;
and once plain Feast (`feast_historical`, Feast's own duckdb store) at --feast-rows. Each
measurement runs in its own subprocess (benchmarks/_common.run_child) so its peak RSS (that
child's own VmHWM) is its own, imports included. Ray's workers are processes of their own: for a
Ray row that peak is the driver's, and ProcessTree samples Ray's processes from /proc for the
largest worker's peak RSS, the peak sum of their private memory and their CPU, which the row's
CPU seconds include. rows/s come from each run's best call; `by_size` in the JSON has, per size,
Ray's 2-worker speed-up over 1, Ray's time over the duckdb engine's, and every engine's seconds
per 1M rows (the same figure at every size means linear growth). A run over --timeout seconds,
or holding over --max-rss-gb resident with the processes it started (the box is shared), is
stopped with them and is a failed row with its reason.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dataset.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dataset.py --sizes 1000000 10000000 --out dataset_10m
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dataset.py --sizes 200000 --pair-rows 200000 --workers

Feast runs once at --feast-rows (default 1M: 7-14 s and ~2.4 GB peak here); if that fails or
times out it is measured at 100k instead, with ours re-measured at that size for the ratio (the
failed attempt stays in the JSON as a row with its error; the script still exits 0). Any other
failed child shows its error and stderr in the table and the JSON, and the script exits 1.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dataset.py --quick   # smoke: 20k rows per view, 10k entity
                                                                         # rows, Ray once at 2 workers, in this
                                                                         # process, no peak RSS
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ProcessTree,
    add_run_args,
    failures,
    finish,
    machine,
    output_path,
    parse_or_run_child,
    print_table,
    run_path,
    write_json,
)

AS_OF = pd.Timestamp("2026-11-01", tz="UTC")
NOTES = ("seconds: wall per call inside a fresh process (the first call includes allocator warm-up and, for Ray, "
         "starting its workers); rows/s: from the best call; CPU s: the process's user + sys, for Ray plus every "
         "Ray process's (ProcessTree); peak RSS: that process's own VmHWM (for Ray, the driver's), imports and the "
         "entity frame included; Ray worker peak: the largest VmHWM of one Ray worker process (object-store pages "
         "it mapped included); Ray private sum: the largest sum of RssAnon over all Ray processes at one 0.2 s "
         "sample of /proc; load_avg: the 1-minute load average after each run (2 cores, shared)")


# ---------------------------------------------------------------- synthetic workspace

def _ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """16-hex ids like pipelines.text.query_id."""
    return np.array([f"{x:016x}" for x in rng.integers(0, 2**63, n, dtype=np.int64)], dtype=object)


def _words(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    vocab = np.array([f"w{k}" for k in range(5000)], dtype=object)
    lens = rng.integers(lo, hi + 1, n)
    return [" ".join(vocab[rng.integers(0, len(vocab), k)]) for k in lens]


def _stamps(rng: np.random.Generator, days_ago: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """Event stamps at the snapshot day plus jitter; created a little later, 1% exact ties."""
    jitter = pd.to_timedelta(rng.integers(0, 3600, len(days_ago)), unit="s")
    event = AS_OF - pd.to_timedelta(days_ago, unit="D") + jitter
    created = event + pd.to_timedelta(rng.integers(0, 7200, len(days_ago)), unit="s")
    return pd.Series(event), pd.Series(created)


def pair_table(view, pairs: pd.DataFrame, rows: int, snapshot_days: list[int],
               rng: np.random.Generator) -> pd.DataFrame:
    """`rows` rows of a pair view: pairs cycled over snapshot days, random values per feature."""
    idx = np.arange(rows) % len(pairs)
    days = np.asarray(snapshot_days)[(np.arange(rows) // len(pairs)) % len(snapshot_days)]
    event, created = _stamps(rng, days)
    tie = np.flatnonzero(rng.random(rows) < 0.01)[1:]  # 1%: same pair and event stamp as the row
    idx[tie], event.iloc[tie] = idx[tie - 1], event.iloc[tie - 1].to_numpy()  # before, other created
    df = pd.DataFrame({"query_id": pairs["query_id"].to_numpy()[idx], "item_id": pairs["item_id"].to_numpy()[idx],
                       "event_timestamp": event, "created_timestamp": created})
    for f in view.features:
        kind = str(f.dtype)
        if "String" in kind:
            df[f.name] = rng.choice(np.array(["synthetic-v1", "synthetic-v2", "synthetic-v3"], dtype=object), rows)
        elif "Int" in kind:
            df[f.name] = rng.integers(0, 200, rows)
        else:
            v = rng.random(rows).astype("float32")
            v[rng.random(rows) < 0.05] = np.nan
            df[f.name] = v
    return df


def build(root: Path, pair_rows: int, pairs: int, items: int, queries: int, entity_rows: int,
          seed: int) -> Path:
    """Apply the project's feature repo to a workspace under `root`; write tables and entity rows."""
    from pipelines.features.produce import conform
    from pipelines.features.repo import apply
    from pipelines.signals.spec import table_path
    from pipelines.workspace import DEFAULT_REPO, Workspace

    repo = root / "repo"
    shutil.copytree(DEFAULT_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    ws = Workspace(root=root / "ws", repo_dir=repo)
    contents = apply(ws)
    rng = np.random.default_rng(seed)
    qids, iids = _ids(rng, queries), np.array([str(100000 + k) for k in range(items)], dtype=object)
    pair_df = pd.DataFrame({"query_id": qids[rng.integers(0, queries, pairs)],
                            "item_id": iids[rng.integers(0, items, pairs)]}).drop_duplicates(ignore_index=True)
    snapshots = {"teacher_labels": [45, 30, 14, 1], "retrieval_prior": [40, 20, 10, 2],
                 "engagement_stats": [12, 9, 6, 3]}
    tables: dict[str, pd.DataFrame] = {}
    for name, days in snapshots.items():
        tables[name] = pair_table(contents.signal(name).view, pair_df, pair_rows, days, rng)
    ev, cr = _stamps(rng, rng.integers(60, 400, items))
    titles = _words(rng, items, 3, 12)
    tables["item_profile"] = pd.DataFrame({
        "item_id": iids, "event_timestamp": ev, "created_timestamp": cr, "title": titles,
        "title_tokens": [t.count(" ") + 1 for t in titles], "popularity": rng.random(items).astype("float32")})
    ev, cr = _stamps(rng, rng.integers(60, 400, queries))
    texts = _words(rng, queries, 1, 6)
    tables["query_profile"] = pd.DataFrame({
        "query_id": qids, "event_timestamp": ev, "created_timestamp": cr, "query_text": texts,
        "query_tokens": [t.count(" ") + 1 for t in texts], "frequency": rng.integers(1, 10_000, queries),
        "frequency_bucket": rng.choice(np.array(["head", "torso", "tail"], dtype=object), queries)})
    for name, df in tables.items():
        view = contents.signal(name).view
        out = table_path(ws, view)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(conform(view, df, contents.join_keys(view)), out)  # declared views lack join keys
    known = pair_df.iloc[rng.integers(0, len(pair_df), entity_rows)].reset_index(drop=True)
    unknown = rng.random(entity_rows) < 0.15  # pairs no pair view has: nulls, profiles still join
    known.loc[unknown, "item_id"] = iids[rng.integers(0, items, int(unknown.sum()))]
    known["event_timestamp"] = (AS_OF - pd.to_timedelta(rng.integers(0, 70 * 86400, entity_rows), unit="s")
                                ).astype("datetime64[us, UTC]")
    entities = root / "entities.parquet"
    known.to_parquet(entities, index=False)
    return entities


# ---------------------------------------------------------------- one measurement (child process)

def measure(workspace: Path, repo: Path, entities: Path, engine: str, workers: int, repeat: int) -> dict:
    """Run one engine in this process on the entity rows in `entities`: seconds (wall and CPU) per
    call. engine "ray": Feast's get_historical_features on our Ray store, in a local Ray of
    `workers` CPUs that this call starts; its CPU includes Ray's processes (ProcessTree)."""
    import contextlib
    import resource

    import psutil

    from pipelines.features.dataset import feast_historical
    from pipelines.features.pit import historical_features
    from pipelines.features.ray_store import ray_session
    from pipelines.features.repo import feature_store
    from pipelines.workspace import Workspace

    ws = Workspace(root=workspace, repo_dir=repo, offline="ray" if engine == "ray" else "duckdb")
    ent = pd.read_parquet(entities)
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(ProcessTree()) if engine == "ray" else None
        if engine == "ray":
            stack.enter_context(ray_session(ws, cpus=workers))
        store = feature_store(ws)
        service = store.get_feature_service("training")
        call = historical_features if engine == "pit" else feast_historical
        rss_before = psutil.Process().memory_info().rss / 2**20  # imports, registry, entity frame
        wall, user, system, others = [], [], [], []
        for _ in range(repeat):
            t0, r0, o0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), tree and tree.cpu_seconds()
            out = call(store, service, ent)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            wall.append(round(time.perf_counter() - t0, 3))
            user.append(round(r1.ru_utime - r0.ru_utime, 3))
            system.append(round(r1.ru_stime - r0.ru_stime, 3))  # mostly page zeroing for fresh memory
            others.append(round(tree.cpu_seconds() - o0, 3) if tree else 0.0)
            assert len(out) == len(ent)
            del out
    result = {"engine": engine, "workers": workers or None, "rows": len(ent), "seconds": wall,
              "user_seconds": user, "sys_seconds": system,
              "cpu_seconds": [round(u + s + o, 3) for u, s, o in zip(user, system, others)],
              "rss_before_call_mb": round(rss_before, 1)}
    if tree:
        result.update(driver_cpu_seconds=[round(u + s, 3) for u, s in zip(user, system)], **tree.summary())
    return result


def child(workspace: str, repo: str, entities: str, engine: str, workers: str, repeat: str) -> dict:
    """measure() from the command line's strings (--child)."""
    return measure(Path(workspace), Path(repo), Path(entities), engine, int(workers), int(repeat))


def per_size(runs: list[dict]) -> dict:
    """Per entity-row count, each engine's best seconds and the ratios the issue asks for: Ray's 2
    workers over 1 (speed-up), Ray over the duckdb engine (time); per engine, seconds per 1M rows
    at each size (linear growth: the same figure at every size)."""
    best = {(r["engine"], r["workers"], r["rows"]): min(r["seconds"]) for r in runs
            if r.get("seconds") and not r.get("fallback")}
    out = {}
    for rows in sorted({k[2] for k in best}):
        at = {f"{e}-{w}" if w else e: s for (e, w, n), s in best.items() if n == rows}
        ratios = {}
        if "ray-1" in at and "ray-2" in at:
            ratios["ray_2_over_1_speedup"] = round(at["ray-1"] / at["ray-2"], 2)
        if "pit" in at:
            ratios.update({f"{k}_over_pit_time": round(v / at["pit"], 1) for k, v in at.items() if k.startswith("ray")})
        out[f"{rows}"] = {"best_seconds": at,
                          "seconds_per_1m_rows": {k: round(v * 1e6 / rows, 2) for k, v in at.items()}, **ratios}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair-rows", type=int, default=1_000_000, help="rows per pair view")
    ap.add_argument("--pairs", type=int, default=250_000, help="distinct pairs (rows cycle over snapshots)")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000],
                    help="entity-row counts, each timed with the duckdb engine and Ray at each --workers")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                    help="CPUs of the local Ray, one run each (none: no Ray run)")
    ap.add_argument("--feast-rows", type=int, default=1_000_000,
                    help="entity rows plain Feast is timed on (falls back to 100k if this fails or times out)")
    ap.add_argument("--repeat", type=int, default=5, help="calls per run of the duckdb engine; Feast runs once")
    ap.add_argument("--ray-repeat", type=int, default=2,
                    help="calls per Ray run (the first starts Ray's workers cold)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per duckdb or Ray run")
    ap.add_argument("--max-rss-gb", type=float, default=16,
                    help="a run holding more (with Ray's processes) is stopped: the box is shared")
    ap.add_argument("--feast-timeout", type=float, default=900)
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "dataset", quick="20k rows per pair view, 10k entity rows, 2 calls, Ray once at 2 workers, "
                                      "paths in this process",
                 redis=False)
    a = parse_or_run_child(ap, child, nargs=6, metavar=("WS", "REPO", "ENTITIES", "ENGINE", "WORKERS", "REPEAT"))
    if a is None:
        return
    if a.quick:
        a.pair_rows, a.pairs, a.items, a.queries = (min(a.pair_rows, 20_000), min(a.pairs, 5_000),
                                                    min(a.items, 2_000), min(a.queries, 1_000))
        a.sizes, a.feast_rows, a.repeat = [min(min(a.sizes), 10_000)], min(a.feast_rows, 10_000), min(a.repeat, 2)
        a.workers, a.ray_repeat = [w for w in a.workers if w == max(a.workers)], 1
        a.feast_timeout = min(a.feast_timeout, 300)
    a.sizes = sorted(set(a.sizes))
    out = output_path(a.out, "dataset", a.quick)

    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    script = Path(__file__).resolve()
    try:
        t0 = time.perf_counter()
        entities = build(tmp, a.pair_rows, a.pairs, a.items, a.queries, max(a.sizes), a.seed)
        print(f"built workspace in {time.perf_counter() - t0:.1f}s under {tmp}", flush=True)
        files: dict[int, Path] = {}

        def entity_rows(rows: int) -> Path:
            """The first `rows` entity rows in a file of their own, so a child reads no more than it joins."""
            if rows not in files:
                files[rows] = tmp / f"entities-{rows}.parquet"
                pq.write_table(pq.read_table(entities).slice(0, rows), files[rows])
            return files[rows]

        def run(engine: str, rows: int, repeat: int, timeout: float, workers: int = 0) -> dict:
            name = f"{engine} ({workers} Ray worker{'s' if workers > 1 else ''})" if workers else engine
            print(f"running {name} on {rows:,} entity rows ...", flush=True)
            r = run_path(script, [str(tmp / "ws"), str(tmp / "repo"), str(entity_rows(rows)), engine, str(workers),
                                  str(repeat)], child if a.quick else None, timeout, a.max_rss_gb * 1024)
            return {"engine": engine, "workers": workers or None, "rows": rows, **r,
                    "load_avg": round(os.getloadavg()[0], 2)}

        runs = []
        for rows in a.sizes:
            runs.append(run("pit", rows, a.repeat, a.timeout))
            runs += [run("ray", rows, a.ray_repeat, a.timeout, workers) for workers in a.workers]
        feast = run("feast", a.feast_rows, 1, a.feast_timeout)
        if "error" in feast and a.feast_rows > 100_000:
            runs.append({**feast, "fallback": "measured again at 100k rows"})
            feast = run("feast", 100_000, 1, a.feast_timeout)
        if feast["rows"] not in a.sizes:
            runs.append(run("pit", feast["rows"], a.repeat, a.timeout))
        runs.append(feast)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for r in runs:
        head = (r["engine"], r["workers"] or "-", f"{r['rows']:,}")
        if r.get("error"):
            rows.append((*head, r["error"], "", "", "", "", r["peak_rss_mb"], "", ""))
            continue
        best = min(r["seconds"])
        rows.append((*head, f"{r['seconds'][0]:.2f}", f"{best:.2f}", f"{round(r['rows'] / best):,}",
                     f"{min(r['cpu_seconds']):.2f}", r["rss_before_call_mb"], r["peak_rss_mb"],
                     r.get("ray_worker_peak_rss_mb"), r.get("ray_private_sum_peak_mb")))
    ok = {(r["engine"], r["rows"]): r for r in runs if not r.get("error") and not r["workers"]}
    ratio = {}
    if feast.get("seconds") and ("pit", feast["rows"]) in ok:
        ours = ok[("pit", feast["rows"])]
        ratio = {"rows": feast["rows"],
                 "time_first_call": round(feast["seconds"][0] / ours["seconds"][0], 1),
                 "time_best": round(min(feast["seconds"]) / min(ours["seconds"]), 1),
                 "peak_rss": round(feast["peak_rss_mb"] / ours["peak_rss_mb"], 2) if ours["peak_rss_mb"] else None}
    sizes = per_size(runs)
    print_table("Point-in-time set, service 'training': pit (duckdb engine) vs Feast 0.67 on our Ray store vs plain "
                "Feast (duckdb)",
                ["engine", "Ray workers", "entity rows", "s first call", "s best", "rows/s (best)", "CPU s best",
                 "RSS before MB", "peak RSS MB", "Ray worker peak MB", "Ray private sum MB"], rows)
    for n, s in sizes.items():
        print(f"{int(n):,} rows: s per 1M rows {s['seconds_per_1m_rows']}; "
              + ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("best_seconds", "seconds_per_1m_rows")))
    if ratio:
        rss = f", {ratio['peak_rss']}x peak RSS" if ratio["peak_rss"] else ""
        print(f"Feast / ours at {ratio['rows']:,} rows: {ratio['time_first_call']}x time (first call), "
              f"{ratio['time_best']}x (best){rss}")
    failed = failures([r for r in runs if "fallback" not in r], label="engine")
    path = write_json(out, {
        "benchmark": "dataset", "service": "training", "quick": a.quick,
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/bench_dataset.py " + " ".join(sys.argv[1:]),
        "shape": {"pair_rows_per_view": a.pair_rows, "pairs": a.pairs, "items": a.items,
                  "queries": a.queries, "sizes": a.sizes, "ray_workers": a.workers, "seed": a.seed},
        "notes": NOTES, "machine": machine(), "runs": runs, "failed": failed, "by_size": sizes,
        "feast_over_pit": ratio,
    })
    finish(path, failed, runs)


if __name__ == "__main__":
    main()
