"""Train pCTR and pCVR: XGBoost on downsampled days, corrected, calibrated on a later day, reported
on the held-out days; once with the user views and once without (the ablation).

Read top to bottom: rows (pipelines.engagement.data) -> per target, per feature set: fit on the
training days' kept rows -> raw scores on calibration and held-out days -> corrected for the
downsampling -> isotonic fitted on the calibration days -> scores of raw, corrected and calibrated
on the held-out days, mean predicted vs observed per day -> the with-users models saved with lineage.

pCTR = P(click | impression at a position); pCVR = P(order | click), on the clicked impressions, with
its negatives (clicks without an order) downsampled at the same rate.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.atomic import write_json, write_text
from pipelines.engagement.calibration import (
    IsotonicCalibrator,
    correct_downsampling,
    downsample_negatives,
    reliability_diagram,
    scores,
)
from pipelines.engagement.config import TARGETS, EngagementConfig
from pipelines.engagement.data import PAIR_SERVICE, USER_SERVICE, ImpressionRows, impression_rows
from pipelines.engagement.store import EngagementFiles, EngagementModel
from pipelines.features.dataset import definitions_hash
from pipelines.features.repo import feature_store
from pipelines.workspace import Workspace

FORMS = ("raw", "corrected", "calibrated")
FEATURE_SETS = ("with_users", "without_users")


def target_rows(rows: pd.DataFrame, target: str) -> pd.DataFrame:
    """pCTR reads every impression; pCVR the clicked ones."""
    return rows if target == "click" else rows[rows["click"] == 1]


def fit_booster(x: np.ndarray, y: np.ndarray, config: EngagementConfig):
    """Binary logistic boosted trees (histogram method), seeded."""
    import xgboost as xgb

    params = {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
              "max_depth": config.max_depth, "eta": config.learning_rate, "min_child_weight": 5.0,
              "subsample": 0.8, "colsample_bytree": 0.8, "nthread": config.threads, "seed": config.seed}
    return xgb.train(params, xgb.DMatrix(x, label=y, nthread=config.threads), num_boost_round=config.rounds)


def train_target(data: ImpressionRows, target: str, features: list[str], config: EngagementConfig,
                 console: Console) -> tuple[EngagementModel, dict]:
    """One model of `target` over `features`: fitted, corrected, calibrated, scored on held-out days."""
    rows = target_rows(data.rows, target)
    train = rows[rows["role"] == "train"]
    y_all = train[target].to_numpy()
    if target == "order":  # the click rows were all kept: downsample pCVR's own negatives now
        train = train[downsample_negatives(y_all, config.negative_rate, config.seed + 1)]
    t = time.perf_counter()
    booster = fit_booster(train[features].to_numpy(np.float32), train[target].to_numpy(), config)
    seconds = time.perf_counter() - t
    model = EngagementModel(target, booster, features, config.negative_rate, IsotonicCalibrator([], []))
    calib = rows[rows["role"] == "calibration"]
    model.calibrator.fit(model.corrected(calib), calib[target].to_numpy())
    heldout = rows[rows["role"] == "heldout"]
    y = heldout[target].to_numpy()
    raw = model.raw(heldout)
    corrected = correct_downsampling(raw, config.negative_rate)
    predicted = {"raw": raw, "corrected": corrected, "calibrated": model.calibrator.predict(corrected)}
    per_day = pd.DataFrame({"day": heldout["day"].to_numpy(), "observed": y, "predicted": predicted["calibrated"]}
                           ).groupby("day").agg(observed=("observed", "mean"), predicted=("predicted", "mean"),
                                                rows=("observed", "size"))
    per_day["relative_error"] = per_day["predicted"] / per_day["observed"] - 1.0
    train_rows = data.log_rows["train"] if target == "click" else len(y_all)  # impressions / clicks
    report = {
        "heldout": {form: scores(y, p) for form, p in predicted.items()},
        "per_day": per_day.round(6).reset_index().to_dict("records"),
        "train": {"rows_before_downsampling": train_rows, "rows_fit": len(train), "positives": int(train[target].sum()),
                  "seconds": round(seconds, 1), "rows_per_second": round(train_rows / max(seconds, 1e-9)),
                  "features": len(features)},
    }
    heldout_scores = report["heldout"]
    console.print(f"{target} ({'with' if any(f in data.user_features for f in features) else 'without'} users): "
                  f"fit {len(train):,} rows in {seconds:.1f} s; held-out AUC {heldout_scores['calibrated']['roc_auc']}"
                  f", ECE raw {heldout_scores['raw']['ece']} -> calibrated {heldout_scores['calibrated']['ece']}")
    return model, report | {"curves": {form: (y, p) for form, p in predicted.items()}}


def train_engagement(ws: Workspace, config: EngagementConfig, name: str = "engagement",
                     console: Console | None = None) -> dict:
    """Both targets, with and without user features; saves the with-users models and returns the report."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    data = impression_rows(ws, config, console)
    feature_sets = {"with_users": ["position", *data.pair_features, *data.user_features],
                    "without_users": ["position", *data.pair_features]}
    report: dict = {"config": config.to_dict(), "pit_seconds": data.seconds, "log_rows": data.log_rows,
                    "rows": int(len(data.rows)), "as_of": data.as_of, "targets": {}}
    models, plots = {}, {}
    for target in TARGETS:
        per_set = {}
        for feature_set in FEATURE_SETS if config.user_features else ("without_users",):
            model, result = train_target(data, target, feature_sets[feature_set], config, console)
            plots[f"{target} {feature_set}"] = result.pop("curves")
            per_set[feature_set] = result
            models.setdefault(target, model)  # the first set trained: with users unless the ablation alone
        if len(per_set) == 2:
            with_auc = per_set["with_users"]["heldout"]["calibrated"]["roc_auc"]
            without_auc = per_set["without_users"]["heldout"]["calibrated"]["roc_auc"]
            per_set["user_feature_lift"] = {"roc_auc": round(with_auc - without_auc, 6),
                                            "relative": round(with_auc / without_auc - 1.0, 6)}
        report["targets"][target] = per_set
    store = feature_store(ws)
    report["lineage"] = {
        "feature_services": {s: definitions_hash(store, store.get_feature_service(s))[:12]
                             for s in (USER_SERVICE, PAIR_SERVICE)},
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "name": name}
    report["seconds"] = round(time.perf_counter() - started, 1)
    EngagementFiles.of(ws, name).save(models, report)
    out = report_dir(ws, name)
    for target in TARGETS:  # raw, corrected and calibrated with users; calibrated without
        curves = {f"{fs} {form}": plots[f"{target} {fs}"][form] for fs in FEATURE_SETS
                  if f"{target} {fs}" in plots for form in FORMS if fs == "with_users" or form == "calibrated"}
        reliability_diagram(curves, out / f"reliability-{target}.png",
                            f"{'pCTR' if target == 'click' else 'pCVR'}: held-out days")
    return report


def report_dir(ws: Workspace, name: str) -> Path:
    """Where a model set's report and reliability diagrams go."""
    return ws.root / "reports" / f"engagement-{name}"


def write_report(ws: Workspace, name: str, report: dict) -> Path:
    """report.json and report.md beside the reliability diagrams; returns the directory."""
    out = report_dir(ws, name)
    write_json(out / "report.json", report, indent=2)
    lines = [f"# Engagement models `{name}` (as of {report['as_of']})", "",
             f"Impression log: {report['log_rows']['log']:,} rows; training days {report['log_rows']['train']:,} "
             f"(negatives kept at w = {report['config']['negative_rate']}), calibration "
             f"{report['log_rows']['calibration']:,}, held-out {report['log_rows']['heldout']:,}. "
             f"PIT seconds: {report['pit_seconds']}; total {report['seconds']} s.", "",
             "| target | features | form | ROC-AUC | PR-AUC | log loss | ECE | mean predicted | observed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target, sets in report["targets"].items():
        for feature_set in FEATURE_SETS:
            for form, m in sets.get(feature_set, {}).get("heldout", {}).items():
                lines.append(f"| {target} | {feature_set} | {form} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | "
                             f"{m['log_loss']:.4f} | {m['ece']:.5f} | {m['mean_predicted']:.5f} | "
                             f"{m['observed_rate']:.5f} |")
    lines += ["", "| target | user-feature lift (ROC-AUC, abs / rel) | train rows (before downsampling) | fit rows | "
              "seconds | rows/s |", "| --- | --- | --- | --- | --- | --- |"]
    for target, sets in report["targets"].items():
        lift = sets.get("user_feature_lift", {})
        t = sets.get("with_users", sets.get("without_users"))["train"]
        lines.append(f"| {target} | {lift.get('roc_auc', 'n/a')} / {lift.get('relative', 'n/a')} | "
                     f"{t['rows_before_downsampling']:,} | {t['rows_fit']:,} | {t['seconds']} | "
                     f"{t['rows_per_second']:,} |")
    lines += ["", "Mean calibrated prediction vs observed rate per held-out day:", "",
              "| target | day | observed | predicted | relative error |", "| --- | --- | --- | --- | --- |"]
    for target, sets in report["targets"].items():
        for d in sets.get("with_users", sets.get("without_users"))["per_day"]:
            lines.append(f"| {target} | {d['day']} | {d['observed']:.5f} | {d['predicted']:.5f} | "
                         f"{d['relative_error']:+.4f} |")
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return out
