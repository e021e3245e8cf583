"""Channel report: recall@100 (and the other protocol metrics) of each channel and of the fusion
on the dev split, with search time per channel.

Dev queries are retrieved for here and their judgments are read only to score the lists; nothing
is fitted. Run:

    PYTHONPATH=. .venv/bin/python -m pipelines.retrieval.report --lake LAKE_DIR --work-dir WORK_DIR \
        --out reports/retrieval_channels.json
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.atomic import write_json
from pipelines.lake import Lake
from pipelines.metrics import METRICS, evaluate
from pipelines.retrieval import MISSING, build_channels, search_all
from pipelines.retrieval.fusion import fused_run, prior_table

DEPTH = 100


def hits_run(query_ids: list[str], ids, scores) -> dict[str, dict[str, float]]:
    """One channel's (ids, scores) arrays as a run dict, empty slots dropped."""
    return {qid: {item: float(s) for item, s in zip(row_ids, row_scores) if item != MISSING}
            for qid, row_ids, row_scores in zip(query_ids, ids, scores)}


def channel_report(lake: Lake, work_dir: Path | None = None, split: str = "dev") -> dict:
    """Metrics of each channel and of the RRF fusion over one split's queries, plus timings."""
    queries = lake.read("queries")
    queries = queries[queries["split"] == split].sort_values("query_id").reset_index(drop=True)
    judgments = lake.read("judgments")
    judgments = judgments[judgments["query_id"].isin(queries["query_id"])]
    items = lake.read("items")
    start = time.perf_counter()
    channels = build_channels(items, cache_dir=work_dir / "retrieval" if work_dir else None)
    build_seconds = time.perf_counter() - start
    qids = queries["query_id"].tolist()
    hits, seconds = search_all(channels, queries["query_norm"].tolist(), k=DEPTH)
    runs = {name: hits_run(qids, *h) for name, h in hits.items()}
    start = time.perf_counter()
    table = prior_table(hits, qids)
    seconds["fusion"] = time.perf_counter() - start
    runs["fusion_rrf"] = fused_run(table, DEPTH)
    results = {name: evaluate(run, judgments) for name, run in runs.items()}
    return {
        "split": split,
        "queries": len(qids),
        "judged_queries": int(judgments["query_id"].nunique()),
        "items": len(items),
        "depth": DEPTH,
        "build_seconds": round(build_seconds, 1),
        "search_seconds": {n: round(s, 1) for n, s in seconds.items()},
        "mean": {name: r["mean"] for name, r in results.items()},
        "count": {name: r["count"] for name, r in results.items()},
        "union_pairs_per_query": round(len(table) / max(len(qids), 1), 1),
    }


def json_safe(value):
    """NaN to None, in nested dicts and lists, so the JSON file is standard JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def print_report(report: dict, console: Console | None = None) -> None:
    table = Table(title=f"Retrieval channels on the {report['split']} split "
                        f"({report['judged_queries']:,} judged queries, {report['items']:,} items)")
    table.add_column("run")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    table.add_column("search s", justify="right")
    for name, mean in report["mean"].items():
        secs = report["search_seconds"].get(name.replace("_rrf", ""), float("nan"))
        table.add_row(name, *(f"{mean[m]:.4f}" for m in METRICS), f"{secs:.1f}")
    (console or Console(width=max(Console().width, 120))).print(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, required=True, help="lake directory (unisup ingest output)")
    parser.add_argument("--work-dir", type=Path, default=None, help="cache dir for item embeddings")
    parser.add_argument("--out", type=Path, required=True, help="JSON report path")
    parser.add_argument("--split", default="dev", help="query split to score (default: dev)")
    args = parser.parse_args(argv)
    report = channel_report(Lake(args.lake), args.work_dir, args.split)
    write_json(args.out, json_safe(report), indent=2)
    print_report(report)
    return report


if __name__ == "__main__":
    main()
