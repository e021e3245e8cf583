"""The value model's trade-off: relevance (human judgments) against simulated engagement, per weight.

For each engagement weight w of pipelines.ranking.train.ENGAGEMENT_GRID (value = E[grade] +
w P(click) + 2w P(order)), over one split's judged queries:
- NDCG@10 (both forms) and irrelevant@10 against the human judgments, as `unisup eval` scores;
- CTR and orders per search in the click simulator, as `unisup ab` measures them, paired against
  a baseline model on the same traffic (95% bootstrap intervals of the difference).
The stack scores each query's candidates once; only the value model's sort changes per weight.
Output: tradeoff.json, tradeoff.md, tradeoff.png (NDCG@10 against orders per search), tradeoff.html.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import atomic
from pipelines.evaluation.ab import ABConfig, ab_test
from pipelines.evaluation.judgments import from_lake
from pipelines.evaluation.models import SEARCH, Models
from pipelines.evaluation.report import markdown_html, markdown_table, pyplot, save_figure, write_json
from pipelines.metrics import evaluate
from pipelines.ranking.search import best_first, to_run
from pipelines.ranking.store import CUMULATIVE
from pipelines.ranking.train import ENGAGEMENT_GRID
from pipelines.ranking.value import ValueWeights, value
from pipelines.simulation import fixed_ranker
from pipelines.teacher.calibrate import agreement, binned_ece
from pipelines.teacher.grades import RELEVANT_GRADE, from_cumulative, to_grade
from pipelines.workspace import Workspace

PAGE = 10


def value_tradeoff(ws: Workspace, ranker: str, baseline: str, ab: ABConfig, out: Path,
                   grid: Sequence[float] = ENGAGEMENT_GRID) -> dict:
    jset = from_lake(ws.lake, ab.split)
    models = Models(ws)
    texts, qids = jset.queries["query_norm"].tolist(), jset.queries["query_id"].tolist()
    rows = models.stack(SEARCH + ranker).rank(texts, qids).rows
    base_run = models.runs(texts, qids, [baseline], PAGE)[0][baseline]
    base = fixed_ranker({q: sorted(items, key=items.get, reverse=True) for q, items in base_run.items()})
    lake_queries = ws.lake.read("queries")[["query_id", "frequency"]]
    queries = jset.queries[["query_id", "query_text"]].merge(lake_queries, on="query_id", how="left")
    clicks = ab.click_config(len(queries))
    points = []
    for w in grid:
        weights = ValueWeights(click_weight=w, order_weight=2 * w)
        run = to_run(best_first(rows, value(rows["expected_relevance"].to_numpy(), rows["p_click"].to_numpy(),
                                            rows["p_order"].to_numpy(), weights)))
        metrics = evaluate(run, jset.judgments)["mean"]
        lists = {q: list(items)[:PAGE] for q, items in run.items()}
        test = ab_test(queries, base, fixed_ranker(lists), jset.judgments, clicks, ab.seed, ab.resamples)
        m = test["metrics"]
        points.append({**asdict(weights), **{k: metrics[k] for k in ("ndcg@10", "ndcg@10_condensed", "irrelevant@10")},
                       "ctr": m["ctr"]["b"], "ctr_diff_ci": m["ctr"]["diff_ci"],
                       "orders_per_search": m["orders_per_search"]["b"],
                       "orders_diff_ci": m["orders_per_search"]["diff_ci"],
                       "irrelevant_share": m["irrelevant_share"]["b"],
                       "baseline": {k: m[k]["a"] for k in ("ctr", "orders_per_search", "irrelevant_share")}})
    report = {"ranker": ranker, "baseline": baseline, "split": ab.split, "queries": len(queries),
              "searches": test["searches"], "ab": asdict(ab), "points": points,
              "relevance_head": relevance_head(rows, jset.judgments)}
    write_tradeoff_report(report, out)
    return report


def write_tradeoff_report(report: dict, out: Path) -> dict[str, Path]:
    """tradeoff.json, tradeoff.md, tradeoff.png and tradeoff.html (the page with the plot inside) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out / "tradeoff.json"), "markdown": out / "tradeoff.md",
             "png": plot_tradeoff(report, out / "tradeoff.png"), "html": out / "tradeoff.html"}
    markdown = tradeoff_markdown(report)
    atomic.write_text(paths["markdown"], markdown)
    atomic.write_text(paths["html"], markdown_html(markdown, [paths["png"]]))
    return paths


def relevance_head(rows: pd.DataFrame, judgments: pd.DataFrame) -> dict:
    """The ordinal head on the split's judged candidates (new-query regime): ECE of P(grade >= 2)
    against human relevance >= 2, and the teacher report's agreement table for the ranker."""
    judged = rows.merge(judgments.groupby(["query_id", "item_id"], as_index=False)["relevance"].mean(),
                        on=["query_id", "item_id"])
    cumulative = judged[CUMULATIVE].to_numpy(np.float64)
    grades = to_grade(judged["relevance"])
    return {"ece_p_relevant": binned_ece(cumulative[:, RELEVANT_GRADE - 1], grades >= RELEVANT_GRADE),
            **agreement(grades, from_cumulative(cumulative))}


def tradeoff_markdown(report: dict) -> str:
    rows = [[f"{p['click_weight']:g}", f"{p['order_weight']:g}", f"{p['ndcg@10']:.4f}", f"{p['ndcg@10_condensed']:.4f}",
             f"{p['irrelevant@10']:.4f}", f"{p['ctr']:.4f} [{p['ctr_diff_ci'][0]:+.4f}, {p['ctr_diff_ci'][1]:+.4f}]",
             f"{p['orders_per_search']:.5f} [{p['orders_diff_ci'][0]:+.5f}, {p['orders_diff_ci'][1]:+.5f}]"]
            for p in report["points"]]
    base, head = report["points"][0]["baseline"], report["relevance_head"]
    return (f"# Value-model trade-off: search:{report['ranker']} on {report['split']} "
            f"({report['queries']} queries, {report['searches']:,} simulated searches)\n\n"
            + markdown_table(["click w", "order w", "NDCG@10", "condensed NDCG@10", "irrelevant@10",
                              "CTR [diff vs baseline, 95% CI]", "orders/search [diff, 95% CI]"], rows)
            + f"\n\nBaseline {report['baseline']}: CTR {base['ctr']:.4f}, orders/search "
              f"{base['orders_per_search']:.5f}.\n\nRelevance head on {head['pairs']:,} judged candidate pairs "
              f"(new-query regime): ECE of P(grade >= 2) {head['ece_p_relevant']:.4f}, exact agreement "
              f"{head['exact']:.3f}, within one {head['within_one']:.3f}, QWK {head['qwk']:.3f}.\n")


def plot_tradeoff(report: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["orders_per_search"] for p in report["points"]]
    ys = [p["ndcg@10"] for p in report["points"]]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(report["points"], xs, ys):
        ax.annotate(f"w={p['click_weight']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = report["points"][0]["baseline"]["orders_per_search"]
    ax.axvline(base, color="grey", linestyle="--", label=f"{report['baseline']} orders/search")
    ax.set_xlabel("simulated orders per search")
    ax.set_ylabel(f"NDCG@10 ({report['split']}, human judgments)")
    ax.set_title(f"value = E[grade] + w P(click) + 2w P(order): search:{report['ranker']}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)

