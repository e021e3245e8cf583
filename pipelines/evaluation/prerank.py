"""`unisup prerank eval`: what each pre-ranking variant hands the ranker, scored on a split.

For every query of the split: retrieve N_r candidates (data.retrieve), score all of them once with
the ranker (its value, pipelines.ranking.search: the new-query regime, the split's queries being new
to the store), the light and the strong models of both trainings. Each variant keeps N per query;
the ranker orders the kept ones, and the run is scored like `unisup eval` (NDCG@10 with unjudged = 0
and condensed, NDCG@25, recall@100, irrelevant@10, per frequency bucket). "top-10 kept": the share
of the ranker's own top 10 over all N_r candidates that the variant keeps (the ranker's view of
recall). CPU per query is benchmarks/bench_prerank.py's, not measured here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.evaluation import judgments as judgment_sets
from pipelines.evaluation.offline import score as score_runs
from pipelines.preranking.data import retrieve
from pipelines.preranking.route import keep, route
from pipelines.preranking.store import PrerankerFiles, scores
from pipelines.ranking.search import SearchStack, best_first, to_run
from pipelines.workspace import Workspace

BUDGETS = (0.1, 0.2, 0.3)
CHUNK_QUERIES = 200  # queries retrieved and scored at a time


def variants(budgets) -> list[dict]:
    """Each row of the table: which light and strong model, at which budget (None: by retrieval order)."""
    out = [{"variant": "no pre-ranking (fusion order)", "light": None, "strong": None, "budget": None},
           {"variant": "light everywhere", "light": "light-hap", "strong": None, "budget": 0.0},
           {"variant": "strong everywhere", "light": "light-uniform", "strong": "strong-uniform", "budget": 1.0},
           {"variant": "strong everywhere, HAP's strong model", "light": "light-hap",
            "strong": "strong-hap", "budget": 1.0}]
    for b in budgets:
        out.append({"variant": f"uniform, budget {b:g}", "light": "light-uniform", "strong": "strong-uniform",
                    "budget": b})
        out.append({"variant": f"HAP, budget {b:g}", "light": "light-hap", "strong": "strong-hap", "budget": b})
    return out


def scored_candidates(ws: Workspace, models: dict, specs: dict, meta: dict, jset, known: pd.DataFrame | None,
                      console: Console, chunk: int = CHUNK_QUERIES) -> pd.DataFrame:
    """Every retrieved candidate of the judgment set's queries: query_id, item_id, retrieved_rank, the
    ranker's value and each model's score. known: pair rows standing in for the store's (the
    known-query regime, pipelines.ranking.precompute). Queries go through in chunks, each chunk's wide
    feature frame dropped once scored (bounded memory)."""
    stack = SearchStack.load(ws, meta["data"]["ranker"])
    texts, qids = jset.queries["query_norm"].tolist(), jset.queries["query_id"].tolist()
    parts = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"retrieve, rank, pre-rank ({'known' if known is not None else 'new'} queries)",
                            total=len(qids))
        for start in range(0, len(qids), chunk):
            t, q = texts[start:start + chunk], qids[start:start + chunk]
            rows = retrieve(stack.runner, t, q, stack.candidate_model, meta["data"]["n_retrieve"], progress=False)
            pairs = None if known is None else known[known["query_id"].isin(q)]
            rows = stack.score(t, q, candidates=rows, lambdamart=False, progress=False, known=pairs).rows
            part = rows[["query_id", "item_id", "retrieved_rank"]].assign(
                ranker_value=sum(stack.terms(rows, "value").values()))
            for key, model in models.items():
                part[key] = scores(model, specs[key.partition("-")[0]], rows)
            parts.append(part)
            bar.advance(task, len(q))
    return pd.concat(parts, ignore_index=True)


def evaluate_preranker(ws: Workspace, name: str, split: str = "dev", budgets=BUDGETS, precompute: bool = False,
                       out: Path | None = None, console: Console | None = None) -> dict:
    """Both regimes with `precompute` (the new-query one alone without): per regime, the table of
    `variants`; written to OUT/prerank.json and prerank.md."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    models, specs, meta = PrerankerFiles.of(ws, name).load()
    jset = judgment_sets.from_lake(ws.lake, split)
    console.print(f"pre-rank eval: {len(jset.queries):,} {split} queries, top {meta['data']['n_retrieve']} "
                  f"-> {meta['data']['n_keep']}, ranker {meta['data']['ranker']!r}")
    regimes = {"new": None}
    if precompute:
        from pipelines.ranking.precompute import precompute_pair_features

        regimes["known"] = precompute_pair_features(ws, jset.queries["query_norm"].tolist(),
                                                    jset.queries["query_id"].tolist(), console)
    report = {"preranker": name, "split": split, "queries": int(jset.queries.shape[0]),
              "n_retrieve": meta["data"]["n_retrieve"], "n_keep": meta["data"]["n_keep"],
              "ranker": meta["data"]["ranker"], "regimes": {}}
    for regime, known in regimes.items():
        rows = scored_candidates(ws, models, specs, meta, jset, known, console)
        report["candidates"] = int(len(rows))
        report["regimes"][regime] = variant_table(rows, jset, meta["data"]["n_keep"], budgets)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = out or ws.root / "reports" / f"prerank-{name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "prerank.json").write_text(json.dumps(report, indent=2))
    (out / "prerank.md").write_text(markdown(report))
    report["out"] = str(out)
    return report


def variant_table(rows: pd.DataFrame, jset, n_keep: int, budgets) -> list[dict]:
    ranker_top = best_first(rows, rows["ranker_value"]).groupby("query_id", sort=False).head(10)
    ranker_top = set(zip(ranker_top["query_id"], ranker_top["item_id"]))
    table = []
    for v in variants(budgets):
        if v["light"] is None:
            kept, routed = rows["retrieved_rank"].to_numpy() <= n_keep, np.zeros(len(rows), bool)
        else:
            frame = rows[["query_id", "item_id"]].assign(light=rows[v["light"]].to_numpy())
            routed = route(frame, n_keep, v["budget"])
            strong = rows[v["strong"]].to_numpy() if v["strong"] else np.full(len(rows), np.nan)
            kept = keep(frame.assign(strong=np.where(routed, strong, np.nan)), n_keep, v["budget"])
        final = best_first(rows.loc[kept, ["query_id", "item_id"]], rows.loc[kept, "ranker_value"])
        result = score_runs({"run": to_run(final)}, jset)["run"]
        pairs = set(zip(rows.loc[kept, "query_id"], rows.loc[kept, "item_id"]))
        table.append({**v, "top10_kept": round(len(ranker_top & pairs) / max(len(ranker_top), 1), 4),
                      "routed_share": round(float(routed.mean()), 4),
                      "mean": {m: round(x, 4) for m, x in result["mean"].items()},
                      "by_bucket": {b: {m: round(x, 4) for m, x in r["mean"].items()}
                                    for b, r in result["by_bucket"].items()}})
    return table


REGIMES = {"new": "new queries (no pair rows in the store)",
           "known": "known queries (the producers' pair rows precomputed, --precompute)"}


def markdown(report: dict) -> str:
    lines = [f"# Pre-ranking on {report['split']} ({report['queries']:,} queries)", "",
             f"Retrieve {report['n_retrieve']:,} -> pre-rank -> the ranker {report['ranker']!r} sees "
             f"{report['n_keep']}."]
    for regime, table in report["regimes"].items():
        lines += ["", f"## {REGIMES[regime]}", "",
                  "| variant | ranker's top 10 kept | routed | NDCG@10 | NDCG@10 condensed | NDCG@25 | recall@100 "
                  "| irrelevant@10 |", "|---|---|---|---|---|---|---|---|"]
        for v in table:
            m = v["mean"]
            lines.append(f"| {v['variant']} | {v['top10_kept']:.4f} | {v['routed_share']:.3f} | {m['ndcg@10']:.4f} | "
                         f"{m['ndcg@10_condensed']:.4f} | {m['ndcg@25']:.4f} | {m['recall@100']:.4f} | "
                         f"{m['irrelevant@10']:.4f} |")
    return "\n".join(lines) + "\n"
