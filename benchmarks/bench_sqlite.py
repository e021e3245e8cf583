"""The embedded default (SQLite): pipelines.features.sqlite_fast vs plain Feast, writes and reads.

Materialize: --rows seeded synthetic rows of one pair view (--view, default engagement_stats; the
rows of bench_materialize.py) into a workspace's online.db through materialize_sqlite, then the same
on a --feast-rows table through ours and through Feast's `store.materialize` (each in its own
process: peak RSS is its own); the two files written from that table are compared row by row.
Lookups: 100 pairs per call (90% stored pairs, 10% random query x item) of `retriever_online` from
the --rows store, through OnlineFeatures (the fast reader; as a DataFrame and as the dict of columns
the service reads) and Feast's get_online_features, in the same process one after the other
(--lookups each, after a warm-up).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sqlite.py [--rows 3000000] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    add_run_args,
    cpu_seconds,
    failures,
    finish,
    latency_summary,
    machine,
    output_path,
    parse_or_run_child,
    print_table,
    run_path,
    write_json,
)
from benchmarks.bench_materialize import AS_OF, build

warnings.filterwarnings("ignore")  # Feast's experimental-ODFV and ibis deprecation notices
SERVICE = "retriever_online"


def materialize_child(engine: str, root: str, view_name: str) -> dict:
    """One measured full materialization of `view_name` in this (fresh) process."""
    from pipelines.features.repo import feature_store
    from pipelines.features.sqlite_fast import materialize_sqlite
    from pipelines.workspace import Workspace

    ws = Workspace(root=Path(root), online="sqlite")
    store = feature_store(ws)
    view = store.get_feature_view(view_name)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t0, c0 = time.perf_counter(), cpu_seconds()
        if engine == "feast":
            store.materialize(start_date=AS_OF - view.ttl, end_date=AS_OF, feature_views=[view_name])
        else:
            materialize_sqlite(ws, views=[view_name], end=AS_OF, incremental=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3)}


def lookup_child(root: str, view_name: str, lookups: str, batch: str, seed: str) -> dict:
    """p50/p99 of `lookups` calls per path, both paths in this process on the same request batches."""
    from pipelines.features.online import OnlineFeatures
    from pipelines.features.repo import feature_store
    from pipelines.signals.spec import table_path
    from pipelines.workspace import Workspace

    ws = Workspace(root=Path(root), online="sqlite")
    store = feature_store(ws)
    keys = pq.read_table(table_path(ws, store.get_feature_view(view_name)), columns=["query_id", "item_id"])
    q, it = (keys[c].to_numpy(zero_copy_only=False) for c in ("query_id", "item_id"))
    rng, n, size = np.random.default_rng(int(seed)), int(lookups), int(batch)
    warm = 50
    rows = rng.integers(0, len(q), (n + warm, size))
    other = rng.integers(0, len(q), (n + warm, size))
    mixed = rng.random((n + warm, size)) < 0.1
    batches = [[(q[r], it[o] if m else it[r]) for r, o, m in zip(rr, oo, mm)] for rr, oo, mm in zip(rows, other, mixed)]
    ours = OnlineFeatures(ws, SERVICE)
    paths = {"ours": ours.get_online_features, "ours, dict of columns (what /retrieve reads)": ours.get_online_columns,
             "feast": OnlineFeatures(ws, SERVICE, engine="feast").get_online_features}
    out = {}
    for name, call in paths.items():
        for pairs in batches[:warm]:
            call(pairs)
        times = []
        for pairs in batches[warm:]:
            t0 = time.perf_counter()
            call(pairs)
            times.append(time.perf_counter() - t0)
        out[name] = latency_summary(times)
    same = all(_equal(paths["ours"](b), paths["feast"](b)) for b in batches[:20])
    return {"paths": out, "equal_to_feast_on_20_batches": same}


def _equal(ours, feast) -> bool:
    """Same frame up to column order (Feast orders a view's features by set iteration)."""
    return sorted(ours.columns) == sorted(feast.columns) and ours.equals(feast[ours.columns])


def dump(root: Path, view_name: str) -> list[tuple]:
    with sqlite3.connect(root / "online.db") as conn:
        return conn.execute(f'SELECT * FROM "unisup_{view_name}" ORDER BY entity_key, feature_name').fetchall()


def child(kind: str, *args: str) -> dict:
    """One measured path in a fresh interpreter (run_child): kind "materialize" or "lookup"."""
    return materialize_child(*args) if kind == "materialize" else lookup_child(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--feast-rows", type=int, default=100_000)
    ap.add_argument("--view", default="engagement_stats")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "bench_sqlite", quick="5k rows, Feast on 2k, 50 lookups, paths in this process")
    a = parse_or_run_child(ap, child)
    if a is None:
        return
    if a.quick:
        a.rows, a.feast_rows, a.lookups = min(a.rows, 5_000), min(a.feast_rows, 2_000), min(a.lookups, 50)
    a.feast_rows = min(a.feast_rows, a.rows)
    out = output_path(a.out, "bench_sqlite", a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sqlite_"))
    script, runs = Path(__file__).resolve(), {}
    quick_child = (lambda kind, *args: materialize_child(*args) if kind == "materialize"
                   else lookup_child(*args)) if a.quick else None
    try:
        t0 = time.perf_counter()
        spaces = {"full": build(tmp / "full", "sqlite", a.view, a.rows, a.seed),
                  "sub_ours": build(tmp / "sub_ours", "sqlite", a.view, a.feast_rows, a.seed),
                  "sub_feast": build(tmp / "sub_feast", "sqlite", a.view, a.feast_rows, a.seed)}
        print(f"built {a.rows:,} + 2 x {a.feast_rows:,} rows in {time.perf_counter() - t0:.1f}s at {tmp}")
        plan = [("ours", "full", a.rows, "ours (sqlite_fast)"),
                ("ours", "sub_ours", a.feast_rows, "ours, Feast's table"),
                ("feast", "sub_feast", a.feast_rows, "plain Feast store.materialize")]
        for engine, space, rows, label in plan:
            print(f"running: {label} ({rows:,} rows) ...", flush=True)
            r = run_path(script, ["materialize", engine, str(spaces[space].root), a.view], child=quick_child)
            r.update(engine=engine, rows=rows, label=label)
            if "seconds" in r:
                r["rows_per_s"] = round(rows / r["seconds"])
            runs[label] = r
        identical = dump(tmp / "sub_ours", a.view) == dump(tmp / "sub_feast", a.view)
        db_mb = round((tmp / "full" / "online.db").stat().st_size / 2**20, 1)
        print(f"running: lookups of {a.batch} pairs ...", flush=True)
        lookups = run_path(script, ["lookup", str(spaces["full"].root), a.view, str(a.lookups), str(a.batch),
                                    str(a.seed)], child=quick_child)
        lookups["label"] = f"lookups of {a.batch} pairs"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, feast = runs["ours, Feast's table"], runs["plain Feast store.materialize"]
    both = "rows_per_s" in ours and "rows_per_s" in feast
    ratio = round(ours["rows_per_s"] / feast["rows_per_s"], 1) if both else None
    failed = failures([*runs.values(), lookups])
    if not identical:
        failed.append("ours differs from Feast's SQLite rows on the same table")
    if lookups.get("equal_to_feast_on_20_batches") is False:
        failed.append("the fast reader's answers differ from Feast's")
    paths = lookups.get("paths", {})
    lookup_ratio = (round(paths["feast"]["p50_ms"] / paths["ours"]["p50_ms"], 1)
                    if "ours" in paths and "feast" in paths else None)
    result = {"view": a.view, "rows": a.rows, "feast_rows": a.feast_rows, "quick": a.quick,
              "materialize": list(runs.values()), "speedup_vs_feast": ratio, "identical_to_feast": identical,
              "online_db_mb": db_mb, "lookups": lookups, "lookup_p50_speedup_vs_feast": lookup_ratio,
              "failed": failed, "machine": machine()}
    path = write_json(out, result)
    print_table(f"materialize {a.view} into SQLite: {ratio}x Feast's rows/s on {a.feast_rows:,} rows; "
                f"rows identical to Feast's: {identical}; online.db {db_mb} MB for {a.rows:,} rows",
                ["path", "rows", "seconds", "rows/s", "peak RSS MB"],
                [(r["label"], f"{r['rows']:,}", r.get("seconds", r.get("error")), f"{r.get('rows_per_s', '-'):,}"
                  if "rows_per_s" in r else "-", r.get("peak_rss_mb")) for r in runs.values()])
    print_table(f"{a.batch}-pair lookups of {SERVICE} from SQLite ({a.lookups} each): p50 {lookup_ratio}x faster",
                ["path", "p50 ms", "p99 ms"],
                [(name, p["p50_ms"], p["p99_ms"]) for name, p in paths.items()])
    finish(path, failed, [*runs.values(), lookups])


if __name__ == "__main__":
    main()
