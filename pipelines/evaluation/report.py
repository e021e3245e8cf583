"""Writing evaluation and A/B results: JSON for machines, Markdown for people, PNG for a glance, and
one self-contained HTML page (the Markdown's tables with the PNGs inside) to open or mail as one file.

Nothing is computed here beyond formatting: the numbers come from offline.py (metrics.evaluate) and
ab.py (the replayed simulator).
"""

from __future__ import annotations

import base64
import html
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines import atomic
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


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (atomically) and close a figure."""
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)
    return path


def write_json(report: dict, path: Path) -> Path:
    """Standard JSON (NaN as null, paths as strings), so any reader can load it."""
    return atomic.write_json(path, json_safe(report), indent=2, default=str)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    """A number for a table cell; '–' where it is undefined (None or NaN)."""
    return "–" if value is None or math.isnan(value) else format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


CSS = ("body{font:15px/1.5 system-ui,sans-serif;color:#1b1b1b;background:#fff;max-width:80em;margin:2em auto;"
       "padding:0 1em}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #999;padding:.3em .6em}"
       "th{background:#e8ecf2}td{font-variant-numeric:tabular-nums}.r{text-align:right}"
       "img{max-width:100%;display:block;margin:1em 0}")


def markdown_html(markdown: str, images: Sequence[Path] = ()) -> str:
    """A self-contained HTML page of a report's Markdown (the headings, paragraphs and tables this module
    writes) with the PNGs embedded as data URIs: no second copy of the tables, nothing fetched."""
    def kind(line: str) -> str:
        if line.startswith("|"):
            return "table"
        if line.startswith("#"):
            return "heading"
        return "text" if line.strip() else "blank"

    body = []
    for k, group in itertools.groupby(markdown.splitlines(), kind):
        lines = list(group)
        if k == "table":
            body.append(_html_table(lines))
        elif k == "heading":
            for line in lines:
                level = len(line) - len(line.lstrip("#"))
                body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif k == "text":
            body.append(f"<p>{html.escape(' '.join(lines))}</p>")
    for png in map(Path, images):
        data = base64.b64encode(png.read_bytes()).decode()
        body.append(f'<img alt="{html.escape(png.name)}" src="data:image/png;base64,{data}">')
    title = next((line.lstrip("# ") for line in markdown.splitlines() if line.startswith("#")), "report")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_table(lines: list[str]) -> str:
    """A table as markdown_table writes it: header row, alignment row ('---:' = right), body rows."""
    def cells(line: str) -> list[str]:
        return [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]

    right = [c.endswith(":") for c in cells(lines[1])]

    def row(line: str, tag: str) -> str:
        return "<tr>" + "".join(f'<{tag}{" class=r" * r}>{c}</{tag}>' for c, r in zip(cells(line), right)) + "</tr>"

    return ("<table><thead>" + row(lines[0], "th") + "</thead><tbody>"
            + "".join(row(line, "td") for line in lines[2:]) + "</tbody></table>")


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    """report.json, report.md, report.html, per_query.csv, metrics.png, ndcg_by_bucket.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(report, out / "report.json"),
             "markdown": out / "report.md", "html": out / "report.html", "per_query": out / "per_query.csv",
             "metrics_png": plot_metrics(report, out / "metrics.png"),
             "buckets_png": plot_buckets(report, out / "ndcg_by_bucket.png")}
    markdown = eval_markdown(report)
    atomic.write_text(paths["markdown"], markdown)
    atomic.write_text(paths["html"], markdown_html(markdown, [paths["metrics_png"], paths["buckets_png"]]))
    atomic.write_text(paths["per_query"], per_query_frame(results, queries).to_csv(index=False, float_format="%.6g"))
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
    """ab.json, ab.md and ab.html in `out`."""
    paths = {"json": write_json(report, out / "ab.json"), "markdown": out / "ab.md", "html": out / "ab.html"}
    markdown = ab_markdown(report)
    atomic.write_text(paths["markdown"], markdown)
    atomic.write_text(paths["html"], markdown_html(markdown))
    return paths
