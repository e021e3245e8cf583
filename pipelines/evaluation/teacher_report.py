"""Teacher report: quality, calibration and cost of stage 1, stage 2 everywhere and the cascade, on dev.

For every dev query, its judged items are scored by each teacher and re-ranked; NDCG@10 comes from
pipelines.metrics (the one definition: linear gain relevance - 1). Dev judgments are read
here only to score; the teacher is fitted on training queries (or loaded from the work dir where the
producer fitted it) and dev queries are retrieved for only to give their pairs the prior's ranks.

- ndcg@10: ranking by calibrated expected grade (ties broken by the raw one); random order and the
  retrieval prior's fusion score are reference rows (what re-ranking judged items gives for free);
- gain kept: (ndcg - random) / (stage 2 everywhere - random), the share of stage 2's improvement
  over a random order that a method keeps (NDCG of judged items alone is compressed near 1);
- ece / top-label ece, raw and calibrated (definitions in calibrate.py);
- CPU seconds per 1,000 pairs (process time over both threads): stage 1 = features + model +
  calibration; stage 2 = cross-encoder + calibration; cascade = stage 1 on all + stage 2 on the
  escalated pairs, each measured; cost share = cost / stage 2 everywhere's.

Run `unisup signals report` (writes workspace/reports/teacher.json and prints a table).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from pipelines.lake import Lake
from pipelines.signals.retrieval_prior import candidate_table
from pipelines.signals.spec import SignalContext
from pipelines.signals.teacher_labels import fitted_teacher
from pipelines.teacher.calibrate import ece, top_label_ece
from pipelines.teacher.cascade import TeacherConfig, combine, escalate, ranking_score, rerank_ndcg
from pipelines.teacher.grades import confidence, expected_grade, to_grade


def dev_pairs(ctx: SignalContext, channels: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dev judged pairs with the prior's columns (ranks of the dev queries' own retrieval).

    The dev search goes through the same cached candidate table as the producers, so a second
    report does not search again."""
    queries = ctx.lake.read("queries")
    queries = queries[queries["split"] == "dev"].sort_values("query_id").reset_index(drop=True)
    judgments = ctx.lake.read("judgments")
    judgments = judgments[judgments["query_id"].isin(queries["query_id"])]
    prior = candidate_table(ctx, channels, queries, ctx.lake.read("items"))
    keys = ["query_id", "item_id"]
    pairs = judgments[[*keys, "relevance"]].merge(prior, on=keys, how="left")
    pairs = pairs.merge(queries[["query_id", "query_norm"]], on="query_id")
    return pairs.sort_values(keys).reset_index(drop=True), judgments


def _cpu_of(fn):
    """(result, CPU seconds of the call)."""
    cpu = time.process_time()
    out = fn()
    return out, time.process_time() - cpu


def teacher_report(lake: Lake, work_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Every figure of the module docstring for the teacher in work_dir (fitted first if missing)."""
    console = Console(stderr=True)
    ctx = SignalContext(lake=lake, as_of=pd.Timestamp.now(tz="UTC"), seed=seed, quick=quick,
                        work_dir=work_dir)
    config = TeacherConfig.quick(seed) if quick else TeacherConfig(seed=seed)
    teacher, _train_pairs, scorer, _ = fitted_teacher(ctx, config, console)
    pairs, judgments = dev_pairs(ctx, scorer.channels)
    grades, n = to_grade(pairs["relevance"]), len(pairs)
    console.print(f"teacher report: {n:,} judged pairs of {pairs['query_id'].nunique():,} dev queries")

    (raw1, cal1), cpu1 = _cpu_of(lambda: teacher.stage1_probs(scorer.features(pairs)))
    queries = pairs["query_norm"].to_numpy(object)
    titles = np.asarray(scorer.titles_of(pairs["item_id"]), object)
    ce, cpu_ce = _cpu_of(lambda: teacher.cross_encoder_probs(list(queries), list(titles), progress=True))
    raw2, cal2 = teacher.stage2_probs(ce, raw1)
    mask = escalate(confidence(cal1), teacher.tau)
    _, cpu_escalated = _cpu_of(lambda: teacher.cross_encoder_probs(list(queries[mask]), list(titles[mask])))
    cal3, stage = combine(cal1, cal2[mask], mask)
    raw3, _ = combine(raw1, raw2[mask], mask)

    def row(name: str, cal: np.ndarray, raw: np.ndarray, cpu: float, share: float | None) -> dict:
        return {"method": name, "ndcg@10": rerank_ndcg(pairs, ranking_score(cal, raw), judgments),
                "ndcg@10_raw": rerank_ndcg(pairs, expected_grade(raw), judgments),
                "ece_raw": ece(raw, grades), "ece_calibrated": ece(cal, grades),
                "top_ece_raw": top_label_ece(raw, grades), "top_ece_calibrated": top_label_ece(cal, grades),
                "cpu_s_per_1k": 1e3 * cpu / n, "escalation_share": share}

    rows = [row("stage 1 (boosting)", cal1, raw1, cpu1, 0.0),
            row("cross-encoder alone, everywhere", teacher.calib_ce.transform(ce), ce, cpu_ce, None),
            row("stage 2 everywhere (cross-encoder + stage 1)", cal2, raw2, cpu1 + cpu_ce, 1.0),
            row("cascade", cal3, raw3, cpu1 + cpu_escalated, float(mask.mean()))]
    fusion = pairs["fusion_score"].fillna(0).to_numpy()
    reference = {"random order": rerank_ndcg(pairs, np.random.default_rng(seed).random(n), judgments),
                 "retrieval prior (fusion score)": rerank_ndcg(pairs, fusion, judgments)}
    full, floor = rows[2], reference["random order"]
    for r in rows:
        r["ndcg_retention"] = r["ndcg@10"] / full["ndcg@10"]
        gain = full["ndcg@10"] - floor
        r["gain_kept"] = (r["ndcg@10"] - floor) / gain if gain > 0 else None
        r["cost_share"] = r["cpu_s_per_1k"] / full["cpu_s_per_1k"]
    cascade = rows[3]
    summary = work_dir / "teacher" / "labels_summary.json"
    keep = ("cost1_cpu_per_pair", "cost_ce_cpu_per_pair", "fit_pairs", "calib_pairs", "fit_queries",
            "calib_queries", "seconds")
    return {"split": "dev", "pairs": n, "queries": int(pairs["query_id"].nunique()), "tau": teacher.tau,
            "escalated_dev_pairs": int((stage == 2).sum()), "methods": rows, "reference_ndcg@10": reference,
            "targets": {"ndcg_retention>=": 0.95, "cost_share<=": 0.40},
            "met": bool(cascade["ndcg_retention"] >= 0.95 and cascade["cost_share"] <= 0.40),
            "fit": {k: teacher.meta[k] for k in keep},
            "stage2_train": {k: v for k, v in teacher.meta["stage2_train"].items() if k != "loss_log"},
            "producer": json.loads(summary.read_text()) if summary.exists() else None}


def print_report(report: dict, console: Console) -> None:
    table = Table(title=f"Teacher on dev: {report['pairs']:,} judged pairs, {report['queries']:,} queries "
                        f"(tau = {report['tau']:.3f})")
    for col in ("method", "NDCG@10", "retention", "gain kept", "ECE raw", "ECE cal", "top-ECE raw",
                "top-ECE cal", "CPU s / 1k pairs", "cost share", "escalated"):
        table.add_column(col, justify="left" if col == "method" else "right")

    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    for r in report["methods"]:
        table.add_row(r["method"], f"{r['ndcg@10']:.4f}", pct(r["ndcg_retention"]), pct(r["gain_kept"]),
                      f"{r['ece_raw']:.4f}", f"{r['ece_calibrated']:.4f}", f"{r['top_ece_raw']:.4f}",
                      f"{r['top_ece_calibrated']:.4f}", f"{r['cpu_s_per_1k']:.2f}", pct(r["cost_share"]),
                      pct(r["escalation_share"]))
    for name, value in report["reference_ndcg@10"].items():
        table.add_row(f"[dim]{name}[/dim]", f"[dim]{value:.4f}[/dim]", *[""] * 9)
    console.print(table)
    verdict = "met" if report["met"] else "NOT met"
    console.print(f"target (cascade >= 95% of stage-2 NDCG@10 at <= 40% of its cost): {verdict}")

