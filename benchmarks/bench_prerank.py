"""CPU per query of each pre-ranking variant, one request at a time, as /search would run it.

Reads a workspace with a trained ranker and pre-ranker (`unisup rank train`, `unisup prerank train`).
For --queries queries of --split (seeded sample): retrieve N_r candidates once (timed apart: every
variant shares it), then per variant, its own work on that request:
pipelines.preranking.stage.Prerank.select at budget 0 (light everywhere: the LIGHT matrix and the
light MLP over all N_r candidates), 1 (strong everywhere: request-time pair features, ONE online lookup
of the ranker's store features (`ranker_online`) and the strong MLP over all of them) and each
--budget (HAP: the light pass, then the strong model on route.py's band), routing and keep included.
CPU = this process's user + sys time for the variant's work on the query (torch may use several
threads: all of them count); wall p50 beside it. `vs strong` is the CPU ratio to strong everywhere
measured in the same run: the issue's target is HAP at <= 30% of it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_prerank.py --workspace /work/hd [--queries 200] [--out NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import add_run_args, cpu_seconds, finish, machine, output_path, print_table, write_json

warnings.filterwarnings("ignore")  # Feast's experimental-ODFV notices
TARGET_CPU_SHARE = 0.30  # HAP's pre-ranking CPU / strong everywhere's


def run(a: argparse.Namespace) -> dict:
    import torch

    from pipelines.evaluation.judgments import from_lake
    from pipelines.preranking.data import retrieve
    from pipelines.preranking.route import band
    from pipelines.preranking.stage import Prerank
    from pipelines.ranking.search import SearchStack
    from pipelines.workspace import Workspace

    ws = Workspace(root=Path(a.workspace), online=a.online)
    if a.repo:
        ws = Workspace(root=ws.root, online=a.online, repo_dir=Path(a.repo))
    stack = SearchStack.load(ws, a.ranker)
    stages = {"light everywhere": Prerank(ws, a.preranker, 0.0, stack),
              "strong everywhere": Prerank(ws, a.preranker, 1.0, stack),
              **{f"HAP, budget {b:g}": Prerank(ws, a.preranker, b, stack) for b in a.budget}}
    first = next(iter(stages.values()))
    n_retrieve, n_keep = first.n_retrieve, int(first.meta["data"]["n_keep"])
    queries = from_lake(ws.lake, a.split).queries
    queries = queries.sample(n=min(a.queries, len(queries)), random_state=a.seed)
    cpu = {name: [] for name in ["retrieve", *stages]}
    wall = {name: [] for name in cpu}
    strong_scored = {name: [] for name in stages}
    for text, qid in zip(queries["query_norm"], queries["query_id"]):
        c0, w0 = cpu_seconds(), time.perf_counter()
        rows = retrieve(stack.runner, [text], [qid], stack.candidate_model, n_retrieve, progress=False)
        rows["query_norm"] = text
        cpu["retrieve"].append(cpu_seconds() - c0)
        wall["retrieve"].append(time.perf_counter() - w0)
        for name, stage in stages.items():
            c0, w0 = cpu_seconds(), time.perf_counter()
            stage.select(rows, n_keep)
            cpu[name].append(cpu_seconds() - c0)
            wall[name].append(time.perf_counter() - w0)
            strong_scored[name].append(int(band(np.array([len(rows)]), n_keep, stage.budget)[1][0]))
    warm = slice(min(3, len(queries) - 1), None)  # the first requests load models and warm caches
    strong_ms = 1000 * float(np.mean(cpu["strong everywhere"][warm]))
    table = []
    for name in cpu:
        ms = 1000 * float(np.mean(cpu[name][warm]))
        table.append({"variant": name, "cpu_ms_per_query": round(ms, 2),
                      "wall_p50_ms": round(1000 * float(np.median(wall[name][warm])), 2),
                      "strong_scored_per_query": round(float(np.mean(strong_scored[name])), 1)
                      if name in strong_scored else None,
                      "cpu_vs_strong": round(ms / strong_ms, 3) if name != "retrieve" else None})
    hap = [r for r in table if r["variant"].startswith("HAP")]
    return {"workspace": str(ws.root), "preranker": a.preranker, "ranker": a.ranker, "split": a.split,
            "queries": len(queries), "n_retrieve": n_retrieve, "n_keep": n_keep,
            "torch_threads": torch.get_num_threads(), "variants": table,
            "target": {"cpu_share_of_strong": TARGET_CPU_SHARE,
                       "met_at_budgets": [r["variant"] for r in hap if r["cpu_vs_strong"] <= TARGET_CPU_SHARE]},
            "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="Workspace with a trained ranker and pre-ranker")
    ap.add_argument("--online", default="sqlite", help="Its online store (sqlite or a redis:// URL)")
    ap.add_argument("--repo", help="Its feature repo, when not the project's")
    ap.add_argument("--preranker", default="preranker")
    ap.add_argument("--ranker", default="ranker", help="The ranker the pre-ranker was trained for")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--queries", type=int, default=200, help="Queries timed, one request each [200; --quick: 10]")
    ap.add_argument("--budget", type=float, action="append", help="Routing budgets (repeatable) [0.1 0.2 0.3]")
    ap.add_argument("--seed", type=int, default=0)
    add_run_args(ap, "prerank", quick="10 queries", redis=False)
    a = ap.parse_args()
    a.budget = a.budget or [0.1, 0.2, 0.3]
    if a.quick:
        a.queries = min(a.queries, 10)
    out = output_path(a.out, "prerank", a.quick)
    data = run(a)
    print_table(f"pre-ranking CPU per query: {data['queries']} {data['split']} queries, N_r {data['n_retrieve']} "
                f"-> N {data['n_keep']}, {data['machine']['cpu_model']}",
                ["variant", "CPU ms / query", "wall p50 ms", "strong-scored / query", "CPU vs strong"],
                [[r["variant"], r["cpu_ms_per_query"], r["wall_p50_ms"], r["strong_scored_per_query"],
                  None if r["cpu_vs_strong"] is None else f"{r['cpu_vs_strong']:.3f}"] for r in data["variants"]])
    finish(write_json(out, data), [])


if __name__ == "__main__":
    main()
