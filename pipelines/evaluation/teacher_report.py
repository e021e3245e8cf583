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
  escalated pairs, each measured; cost share = cost / stage 2 everywhere's;
- agreement with the human grades per method (calibrate.agreement: both grade distributions, the
  confusion matrix, exact and within-one agreement, quadratic-weighted kappa);
- unjudged candidates: over the teacher_labels rows of the training queries with no human grade,
  the share with P(grade >= 2) >= 0.5 and the mean P(grade >= 2), per version, as the producer
  counted them when it wrote the table (labels_summary.json; flagged if it was built with another
  calibration than the report's);
- calibration samples compared (calibrate.py): the fitted models are calibrated again on each
  sample in COMPARED (tau chosen again each time), and each is measured on dev (ECE and agreement of
  stage 1 and of the cascade) and on UNJUDGED_SAMPLE unjudged candidates of the "fit" training
  queries, which no calibrator sees (stage 1's share with P(relevant) >= 0.5 and mean; in the
  producer the cascade escalates only the 3% least sure candidates, so stage 1's figure is most
  of the cascade's). Nothing is fitted on dev.

Run `unisup signals report` (writes workspace/reports/teacher.json and prints the tables;
`report_markdown` renders the same tables as markdown).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

from pipelines.lake import Lake
from pipelines.signals.retrieval_prior import candidate_table
from pipelines.signals.spec import SignalContext
from pipelines.signals.teacher_labels import fitted_teacher, teacher_work_dir
from pipelines.teacher.calibrate import (
    CalibrationConfig,
    agreement,
    ece,
    relevance_summary,
    top_label_ece,
)
from pipelines.teacher.cascade import Teacher, TeacherConfig, combine, escalate, ranking_score, rerank_ndcg
from pipelines.teacher.grades import confidence, expected_grade, to_grade

# calibration samples compared: (sample, unjudged_relevance); the other settings are the config's
COMPARED = (("judged", 1.0), ("weighted", 1.0), ("candidates", 0.75), ("candidates", 0.5),
            ("candidates", 0.25), ("candidates", 0.0))
UNJUDGED_SAMPLE = 20_000  # unjudged "fit"-query candidates the compared calibrations are read on


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


def setting_name(calibration: CalibrationConfig) -> str:
    if calibration.sample == "candidates":
        return f"candidates, rho = {calibration.unjudged_relevance:g}"
    return calibration.sample


def compare_calibrations(teacher: Teacher, held: pd.DataFrame, config: TeacherConfig, dev: dict,
                         unjudged_raw1: np.ndarray) -> list[dict]:
    """Each calibration of COMPARED fitted on `held` (the calib queries' saved predictions), read
    on dev (`dev`: the judged dev pairs, their judgments, grades and raw1, raw2) and on unjudged
    candidates."""
    def read(cal: np.ndarray, raw: np.ndarray) -> dict:
        return {"ndcg@10": rerank_ndcg(dev["pairs"], ranking_score(cal, raw), dev["judgments"]),
                "ece": ece(cal, dev["grades"]), **agreement(dev["grades"], cal)}

    rows = []
    for sample, rho in track(COMPARED, description="calibrations", console=Console(stderr=True)):
        calibration = replace(config.calibration, sample=sample, unjudged_relevance=rho)
        trial = replace(teacher, meta=copy.deepcopy(teacher.meta))
        trial.calibrate(held, config.cascade, calibration)
        cal1, cal2 = trial.calib1.transform(dev["raw1"]), trial.calib2.transform(dev["raw2"])
        mask = escalate(confidence(cal1), trial.tau)
        cascade, _ = combine(cal1, cal2[mask], mask)
        raw, _ = combine(dev["raw1"], dev["raw2"][mask], mask)
        rows.append({"calibration": setting_name(calibration),
                     "configured": setting_name(calibration) == setting_name(config.calibration),
                     "tau": trial.tau, "dev_escalated": float(mask.mean()),
                     "stage1": read(cal1, dev["raw1"]), "cascade": read(cascade, raw),
                     "unjudged_stage1": relevance_summary(trial.calib1.transform(unjudged_raw1))})
    return rows


def teacher_report(lake: Lake, work_dir: Path, quick: bool = False, seed: int = 0) -> dict:
    """Every figure of the module docstring for the teacher in work_dir (fitted first if missing)."""
    console = Console(stderr=True)
    ctx = SignalContext(lake=lake, as_of=pd.Timestamp.now(tz="UTC"), seed=seed, quick=quick,
                        work_dir=work_dir)
    config = TeacherConfig.quick(seed) if quick else TeacherConfig(seed=seed)
    teacher, train_pairs, scorer, _ = fitted_teacher(ctx, config, console)
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
                "cpu_s_per_1k": 1e3 * cpu / n, "escalation_share": share, "agreement": agreement(grades, cal)}

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

    pool = train_pairs[(train_pairs["role"] == "fit") & train_pairs["relevance"].isna()]
    unjudged = pool.sample(n=min(UNJUDGED_SAMPLE, len(pool)), random_state=seed)
    console.print(f"teacher report: {len(COMPARED)} calibrations, read on dev and {len(unjudged):,} unjudged "
                  "candidates")
    held = pd.read_parquet(teacher_work_dir(ctx) / "calib_predictions.parquet")
    dev = {"pairs": pairs, "judgments": judgments, "grades": grades, "raw1": raw1, "raw2": raw2}
    compared = compare_calibrations(teacher, held, config, dev,
                                    teacher.stage1.predict_proba(scorer.features(unjudged)))
    summary = teacher_work_dir(ctx) / "labels_summary.json"
    producer = json.loads(summary.read_text()) if summary.exists() else None
    keep = ("cost1_cpu_per_pair", "cost_ce_cpu_per_pair", "fit_pairs", "calib_pairs", "fit_queries",
            "calib_queries", "seconds")
    built_with = producer["config"].get("calibration") if producer else None
    return {"split": "dev", "pairs": n, "queries": int(pairs["query_id"].nunique()), "tau": teacher.tau,
            "calibration": setting_name(config.calibration),
            "escalated_dev_pairs": int((stage == 2).sum()), "methods": rows, "reference_ndcg@10": reference,
            "unjudged_candidates": {
                "versions": producer.get("unjudged") if producer else None,
                "built_with": setting_name(CalibrationConfig(**built_with)) if built_with else None,
                "stale": built_with is not None
                and setting_name(CalibrationConfig(**built_with)) != setting_name(config.calibration)},
            "calibrations_compared": compared,
            "targets": {"ndcg_retention>=": 0.95, "cost_share<=": 0.40},
            "met": bool(cascade["ndcg_retention"] >= 0.95 and cascade["cost_share"] <= 0.40),
            "fit": {k: teacher.meta[k] for k in keep},
            "stage2_train": {k: v for k, v in teacher.meta["stage2_train"].items() if k != "loss_log"},
            "producer": producer}


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.1%}"


def _grades(shares: list[float]) -> str:
    return " / ".join(f"{v:.0%}" for v in shares)


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table of the report as (title, header, rows) of strings, for print_report (rich) and
    report_markdown alike."""
    out = []
    rows = [[r["method"], f"{r['ndcg@10']:.4f}", _pct(r["ndcg_retention"]), _pct(r["gain_kept"]),
             f"{r['ece_raw']:.4f}", f"{r['ece_calibrated']:.4f}", f"{r['top_ece_raw']:.4f}",
             f"{r['top_ece_calibrated']:.4f}", f"{r['cpu_s_per_1k']:.2f}", _pct(r["cost_share"]),
             _pct(r["escalation_share"])] for r in report["methods"]]
    rows += [[name, f"{value:.4f}", *[""] * 9] for name, value in report["reference_ndcg@10"].items()]
    out.append((f"Teacher on dev: {report['pairs']:,} judged pairs, {report['queries']:,} queries "
                f"(tau = {report['tau']:.3f}, calibration: {report['calibration']})",
                ["method", "NDCG@10", "retention", "gain kept", "ECE raw", "ECE cal", "top-ECE raw",
                 "top-ECE cal", "CPU s / 1k pairs", "cost share", "escalated"], rows))

    human = report["methods"][0]["agreement"]["human"]
    out.append((f"Agreement with human grades on dev (grade shares 0 / 1 / 2 / 3; human: {_grades(human)})",
                ["method", "most probable grade", "mean probability", "exact", "within one", "QWK"],
                [[r["method"], _grades(a["predicted"]), _grades(a["mean_probability"]), f"{a['exact']:.3f}",
                  f"{a['within_one']:.3f}", f"{a['qwk']:.3f}"]
                 for r in report["methods"] for a in [r["agreement"]]]))
    confusion = report["methods"][-1]["agreement"]["confusion"]
    out.append(("Cascade confusion matrix on dev (rows: human grade, columns: teacher's most probable grade)",
                ["human", *(f"teacher {g}" for g in range(len(confusion)))],
                [[str(g), *(f"{v:,}" for v in row)] for g, row in enumerate(confusion)]))

    unjudged = report["unjudged_candidates"]
    if unjudged["versions"]:
        note = " (STALE: built with another calibration than this report's)" if unjudged["stale"] else ""
        out.append((f"Unjudged candidates of the training queries in teacher_labels, built with "
                     f"calibration {unjudged['built_with']}{note}",
                     ["version", "pairs", "P(relevant) >= 0.5", "mean P(relevant)"],
                     [[v, f"{u['pairs']:,}", _pct(u["share_p_relevant>=0.5"]), f"{u['mean_p_relevant']:.3f}"]
                      for v, u in unjudged["versions"].items()]))

    out.append(("Calibration samples compared (dev: judged pairs; unjudged: fit-query candidates, stage 1)",
                ["calibration", "tau", "cascade NDCG@10", "stage 1 ECE", "cascade ECE", "cascade exact",
                 "cascade within one",
                 "cascade QWK", "cascade most probable grade", "unjudged P(rel) >= 0.5", "unjudged mean P(rel)"],
                [[("* " if c["configured"] else "") + c["calibration"], f"{c['tau']:.3f}",
                  f"{c['cascade']['ndcg@10']:.4f}",
                  f"{c['stage1']['ece']:.4f}", f"{c['cascade']['ece']:.4f}", f"{c['cascade']['exact']:.3f}",
                  f"{c['cascade']['within_one']:.3f}", f"{c['cascade']['qwk']:.3f}",
                  _grades(c["cascade"]["predicted"]), _pct(c["unjudged_stage1"]["share_p_relevant>=0.5"]),
                  f"{c['unjudged_stage1']['mean_p_relevant']:.3f}"] for c in report["calibrations_compared"]]))
    return out


def _verdict(report: dict) -> str:
    verdict = "met" if report["met"] else "NOT met"
    return f"target (cascade >= 95% of stage-2 NDCG@10 at <= 40% of its cost): {verdict}"


def print_report(report: dict, console: Console) -> None:
    for title, header, rows in tables(report):
        table = Table(title=title)
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(_verdict(report))


def report_markdown(report: dict) -> str:
    """The tables of print_report as markdown."""
    parts = []
    for title, header, rows in tables(report):
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
                 "| --- |" + " ---: |" * (len(header) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    return "\n\n".join([*parts, _verdict(report)]) + "\n"
