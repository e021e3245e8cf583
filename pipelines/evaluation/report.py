"""Writing evaluation and A/B results: JSON for machines, Markdown for people, PNG for a glance.

Nothing is computed here beyond formatting: the numbers come from offline.py (metrics.evaluate) and
ab.py (the replayed simulator).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from pipelines.metrics import METRICS
from pipelines.retrieval.report import json_safe

LABELS = {"ndcg@10": "NDCG@10", "ndcg@10_condensed": "condensed NDCG@10", "ndcg@25": "NDCG@25",
          "recall@100": "recall@100", "irrelevant@10": "irrelevant@10", "mean_relevance@10": "mean judged rel@10",
          "coverage@10": "judged coverage@10"}
# both NDCG@10 forms in every table: unjudged-as-0 alone rewards look-alikes of the judged lexical pool
BUCKET_METRICS = ("ndcg@10", "ndcg@10_condensed")


def pyplot():
    """pyplot on the Agg backend: plots go to files only, never to a display (none on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(report: dict, path: Path) -> Path:
    """Standard JSON (NaN as null, paths as strings), so any reader can load it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2, default=str) + "\n")
    return path


def _fmt(value: float | None, spec: str = ".4f") -> str:
    """A number for a table cell; '–' where it is undefined (None or NaN)."""
    return "–" if value is None or math.isnan(value) else format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def eval_markdown(report: dict) -> str:
    """report.md: the metric table per model, then both NDCG@10 forms per frequency bucket."""
    models = report["models"]
    inp = report["input"]
    head = (f"# Retrieval evaluation: {inp['source']}\n\n{inp['queries']:,} queries, {inp['judgments']:,} "
            f"judgments; top-{report['depth']} from {report['catalog_items']:,} catalog items. "
            f"Created {report['created']}.\n")
    if "file" in inp:
        f = inp["file"]
        head += (f"\nFile rows: {f['rows_read']:,} read, {f['rows_used']:,} used, {f['rows_rejected']:,} "
                 f"quarantined {f['rejects_by_reason'] or ''} ({f['rejects_path']}).\n")
    overall = markdown_table(["model", *(LABELS[m] for m in METRICS), "queries", "search s"], [
        [name, *(_fmt(r["mean"][m]) for m in METRICS), str(r["queries"]),
         _fmt(report["search_seconds"].get(name, float("nan")), ".1f")] for name, r in models.items()])
    first = next(iter(models.values()))
    buckets = list(first["by_bucket"])  # offline.score wrote them busiest first
    header = ["model", *(f"{b} ({first['by_bucket'][b]['queries']})" for b in buckets)]
    by_bucket = "\n\n".join(
        f"## {LABELS[m]} by query-frequency bucket (queries)\n\n" + markdown_table(header, [
            [name, *(_fmt(r["by_bucket"][b]["mean"][m]) for b in buckets)] for name, r in models.items()])
        for m in BUCKET_METRICS)
    note = ("Means over the queries where a metric is defined (see pipelines/metrics.py): "
            "NDCG needs a judged item with gain, recall a relevant item, mean judged relevance a judged "
            "item in the top 10. Condensed NDCG@10 drops the unjudged items from each list before scoring "
            "(Sakai 2007).")
    return f"{head}\n{overall}\n\n{note}\n\n{by_bucket}\n"


def plot_metrics(report: dict, path: Path) -> Path:
    """One panel per metric, one bar per model."""
    plt = pyplot()
    models = list(report["models"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.0 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS):
        values = [report["models"][m]["mean"][metric] for m in models]
        bars = ax.bar(range(len(models)), values, color=[f"C{i}" for i in range(len(models))])
        ax.bar_label(bars, labels=[_fmt(v, ".3f") for v in values], fontsize=7)
        ax.set_title(LABELS[metric], fontsize=9)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.margins(y=0.15)
    fig.suptitle(report["input"]["source"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_buckets(report: dict, path: Path) -> Path:
    """One panel per NDCG@10 form, one bar per model in each frequency bucket."""
    models = list(report["models"])
    first = report["models"][models[0]]["by_bucket"]
    buckets = list(first)
    width = 0.8 / max(len(models), 1)
    panel = max(4.0, 1.6 * len(buckets) + 1.5)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(BUCKET_METRICS), figsize=(panel * len(BUCKET_METRICS), 3.6), sharey=True)
    for ax, metric in zip(axes, BUCKET_METRICS):
        for i, model in enumerate(models):
            values = [report["models"][model]["by_bucket"][b]["mean"][metric] for b in buckets]
            ax.bar([j + (i - (len(models) - 1) / 2) * width for j in range(len(buckets))], values, width, label=model)
        ax.set_xticks(range(len(buckets)), [f"{b}\n({first[b]['queries']} q)" for b in buckets])
        ax.set_title(LABELS[metric], fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def per_query_frame(results: dict[str, dict], queries: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, query): query text, bucket and every metric, for error analysis."""
    frames = []
    for model, r in results.items():
        frame = pd.DataFrame.from_dict(r["per_query"], orient="index", columns=list(METRICS))
        frame = frame.rename_axis("query_id").reset_index()
        frames.append(frame.assign(model=model))
    per_query = pd.concat(frames, ignore_index=True)
    per_query = per_query.merge(queries[["query_id", "query_text", "bucket"]], on="query_id", how="left")
    return per_query[["model", "query_id", "query_text", "bucket", *METRICS]]


def write_eval_report(report: dict, results: dict[str, dict], queries: pd.DataFrame, out: Path) -> dict[str, Path]:
    """report.json, report.md, per_query.csv, metrics.png, ndcg_by_bucket.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out / "report.json"),
             "markdown": out / "report.md", "per_query": out / "per_query.csv",
             "metrics_png": plot_metrics(report, out / "metrics.png"),
             "buckets_png": plot_buckets(report, out / "ndcg_by_bucket.png")}
    paths["markdown"].write_text(eval_markdown(report))
    per_query_frame(results, queries).to_csv(paths["per_query"], index=False, float_format="%.6g")
    return paths


AB_LABELS = {"ctr": "CTR (clicks / search)", "orders_per_search": "orders / search",
             "irrelevant_share": "irrelevant share of shown items", "judged_share": "judged share of shown items"}


def ab_markdown(report: dict) -> str:
    """ab.md: one row per metric with both arms, the difference and the relative change, each with its CI."""
    cfg = report["config"]

    def cell(value: float, pair: list[float], spec: str = ".4f") -> str:
        return f"{_fmt(value, spec)} [{_fmt(pair[0], spec)}, {_fmt(pair[1], spec)}]"

    rows = [[AB_LABELS[name], cell(m["a"], m["a_ci"]), cell(m["b"], m["b_ci"]),
             cell(m["diff"], m["diff_ci"], "+.4f"), cell(m["relative"], m["relative_ci"], "+.1%")]
            for name, m in report["metrics"].items()]
    table = markdown_table(["metric", f"A: {cfg['a']}", f"B: {cfg['b']}", "B − A", "B / A − 1"], rows)
    return (f"# Simulated A/B: {cfg['a']} (A) vs {cfg['b']} (B)\n\n"
            f"{report['queries']:,} {cfg['split']} queries, {report['searches']:,} searches per arm over "
            f"{cfg['days']} days, seed {cfg['seed']}; the same searches and pair attractiveness in both "
            f"arms. Brackets: {report['ci']}.\n\n{table}\n")


def write_ab_report(report: dict, out: Path) -> dict[str, Path]:
    """ab.json and ab.md in `out`."""
    paths = {"json": write_json(report, out / "ab.json"), "markdown": out / "ab.md"}
    paths["markdown"].write_text(ab_markdown(report))
    return paths
