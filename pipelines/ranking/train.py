"""The ranker's trainer: read it top to bottom.

1. The training table (data.py): candidates + logged impressions of the training queries, features,
   labels. "fit" queries train, "calib" queries choose the epoch and the value weights.
2. FeatureSpec fitted on the fit rows (features.py); per epoch, query-keyed store features are
   blanked for `drop_share` of the queries (a new draw each epoch): the new-query regime.
3. Loss per batch = relevance (CORAL BCE on cumulative targets: human 1[grade >= k] with weight 1,
   the teacher's cumulative probabilities with `teacher_weight`) + click + order (position-based
   binomial likelihood of future traffic, examination curve known from the simulator).
4. After each epoch, calib NDCG@10 of expected relevance with every query-keyed feature blanked
   (how dev and new queries are served); the best epoch's weights are kept.
5. Value weights: a grid of engagement weights scored on calib (NDCG@10, and expected clicks and
   orders of the top 10 under the model's own engagement heads); the default is the largest
   engagement weight whose calib NDCG@10 stays within `ndcg_tolerance` of the best.
6. The LambdaMART baseline (LightGBM lambdarank) on the same rows, features (raw, nulls kept) and
   labels (human grade, else the teacher's most probable grade), early-stopped on calib.
Output: workspace/models/rankers/<name>/ (ranker.pt, lambdamart.txt, ranker.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.metrics import evaluate
from pipelines.ranking.config import RankerDataConfig, RankerTrainConfig
from pipelines.ranking.data import TEACHER, training_table
from pipelines.ranking.features import FeatureSpec, drop_query_features
from pipelines.ranking.losses import binomial_event_loss, ordinal_loss
from pipelines.ranking.model import GRADES, Ranker, RankerConfig, engagement_probabilities
from pipelines.ranking.store import RankerFiles, predict
from pipelines.ranking.value import ValueWeights
from pipelines.simulation import EXAMINATION
from pipelines.workspace import Workspace

ENGAGEMENT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # click weight; the order weight is twice it


def train_ranker(ws: Workspace, name: str, data: RankerDataConfig, config: RankerTrainConfig,
                 console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    rows, views = training_table(ws, data, console)
    fit = rows[rows["role"] == "fit"].reset_index(drop=True)
    calib = rows[(rows["role"] == "calib") & rows["request_fusion_score"].gt(0)].reset_index(drop=True)  # as served
    spec = FeatureSpec.fit(fit, views)
    calib_new = drop_query_features(calib, spec, share=1.0, seed=config.seed)  # every calib query "new"
    calib_judged = calib.loc[calib["relevance"].notna(), ["query_id", "item_id", "relevance"]]

    targets, weights = relevance_targets(fit, config.teacher_weight)
    position = fit["position"].fillna(0).to_numpy(np.int64)
    exam = np.where(position > 0, np.asarray(EXAMINATION)[np.clip(position - 1, 0, len(EXAMINATION) - 1)], 0.0)
    events = {e: (fit[f"{e}_fit"].fillna(0).to_numpy(np.float32), fit["impressions_fit"].fillna(0).to_numpy(np.float32))
              for e in ("clicks", "orders")}
    model = Ranker(len(spec.inputs), RankerConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    history, best = [], (-1.0, None)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for epoch in range(config.epochs):
        x = torch.from_numpy(spec.matrix(drop_query_features(fit, spec, config.drop_share, config.seed + epoch)))
        order = rng.permutation(len(fit))
        model.train()
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"ranker epoch {epoch + 1}/{config.epochs}", total=len(order))
            for start in range(0, len(order), config.batch_size):
                b = torch.from_numpy(order[start:start + config.batch_size])
                out = model(x[b])
                loss = ordinal_loss(out["relevance"], torch.from_numpy(targets[b.numpy()]),
                                    torch.from_numpy(weights[b.numpy()]))
                e = torch.from_numpy(exam[b.numpy()]).float()
                for p_event, (count, trials) in zip(engagement_probabilities(out), events.values()):
                    loss = loss + config.engagement_loss_weight * binomial_event_loss(
                        p_event, torch.from_numpy(count[b.numpy()]), torch.from_numpy(trials[b.numpy()]), e)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.advance(task, len(b))
        scored = predict(model, spec, calib_new)
        ndcg = evaluate(_run(calib_new, scored["expected_relevance"]), calib_judged)["mean"]["ndcg@10"]
        history.append({"epoch": epoch + 1, "calib_ndcg@10": round(ndcg, 4), "loss": round(loss.item(), 4)})
        console.print(f"epoch {epoch + 1}: calib NDCG@10 (new-query regime) {ndcg:.4f}")
        if ndcg > best[0]:
            best = (ndcg, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    scored = predict(model, spec, calib_new)
    grid = value_grid(calib_new, scored, calib_judged)
    chosen = choose_weights(grid, config.ndcg_tolerance)
    seconds_ranker = time.perf_counter() - started
    booster, lambdamart = fit_lambdamart(fit, calib, calib_judged, spec, config)

    files = RankerFiles.of(ws, name)
    files.save(model, spec, booster, {
        "name": name, "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "data": asdict(data), "train": asdict(config), "ranker": asdict(model.config),
        "value_weights": asdict(chosen), "value_grid": grid, "history": history, "lambdamart": lambdamart,
        "rows": {"fit": len(fit), "calib": len(calib), "human": int(rows["grade"].notna().sum()),
                 "teacher": int((rows["grade"].isna() & rows[TEACHER[0]].notna()).sum()),
                 "impressions": int(rows["position"].notna().sum())},
        "seconds": {"ranker": round(seconds_ranker, 1), "total": round(time.perf_counter() - started, 1)},
        "threads": torch.get_num_threads(),
    })
    console.print(f"ranker {name!r}: value weights {asdict(chosen)}, saved in {files.root}")
    return json.loads(files.meta.read_text())


def relevance_targets(rows: pd.DataFrame, teacher_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative targets (n, GRADES-1) and row weights: human grades where judged, else the
    teacher's cumulative probabilities at `teacher_weight`, else weight 0."""
    human = rows["grade"].to_numpy(np.float64)
    levels = np.arange(1, GRADES)
    targets = (human[:, None] >= levels).astype(np.float32)
    teacher = rows[TEACHER].to_numpy(np.float64)
    teacher_cum = np.cumsum(teacher[:, ::-1], axis=1)[:, ::-1][:, 1:]  # P(grade >= k), k = 1..3
    use_teacher = np.isnan(human) & ~np.isnan(teacher).any(axis=1)
    targets[use_teacher] = teacher_cum[use_teacher]
    weights = np.where(~np.isnan(human), 1.0, np.where(use_teacher, teacher_weight, 0.0)).astype(np.float32)
    return np.nan_to_num(targets, nan=0.0).astype(np.float32), weights


def value_grid(rows: pd.DataFrame, scored: pd.DataFrame, judged: pd.DataFrame) -> list[dict]:
    """Per engagement weight: calib NDCG@10 and the top 10's summed P(click), P(order) per query."""
    from pipelines.ranking.value import value

    grid = []
    for w in ENGAGEMENT_GRID:
        weights = ValueWeights(click_weight=w, order_weight=2 * w)
        score = value(scored["expected_relevance"].to_numpy(), scored["p_click"].to_numpy(),
                      scored["p_order"].to_numpy(), weights)
        top = scored.assign(query_id=rows["query_id"].to_numpy(), v=score).sort_values(
            ["query_id", "v"], ascending=[True, False]).groupby("query_id").head(10)
        slot = top.groupby("query_id").cumcount().to_numpy()
        exam = np.asarray(EXAMINATION)[slot]  # expected events of the page, examination-weighted
        per_query = top.assign(clicks=top["p_click"] * exam, orders=top["p_order"] * exam).groupby("query_id")
        clicks, orders = per_query["clicks"].sum(), per_query["orders"].sum()
        ndcg = evaluate(_run(rows, pd.Series(score)), judged)["mean"]["ndcg@10"]
        grid.append({**asdict(weights), "calib_ndcg@10": round(ndcg, 4),
                     "expected_clicks@10": round(float(clicks.mean()), 4),
                     "expected_orders@10": round(float(orders.mean()), 5)})
    return grid


def choose_weights(grid: list[dict], tolerance: float) -> ValueWeights:
    """The largest engagement weight within `tolerance` (relative) of the grid's best calib NDCG@10."""
    best = max(g["calib_ndcg@10"] for g in grid)
    ok = [g for g in grid if g["calib_ndcg@10"] >= best * (1 - tolerance)]
    pick = max(ok, key=lambda g: g["click_weight"])
    return ValueWeights(click_weight=pick["click_weight"], order_weight=pick["order_weight"])


def fit_lambdamart(fit: pd.DataFrame, calib: pd.DataFrame, calib_judged: pd.DataFrame, spec: FeatureSpec,
                   config: RankerTrainConfig):
    """LightGBM lambdarank on the same rows, features and labels; early-stopped on calib (new-query regime)."""
    import lightgbm as lgb

    def labelled(rows: pd.DataFrame, share: float, seed: int):
        rows = drop_query_features(rows, spec, share, seed)
        teacher = rows[TEACHER].to_numpy(np.float64)
        label = rows["grade"].to_numpy(np.float64)
        guess = np.where(np.isnan(teacher).any(axis=1), np.nan, np.nanargmax(np.nan_to_num(teacher, nan=-1), axis=1))
        label = np.where(np.isnan(label), guess, label)
        keep = ~np.isnan(label)
        rows = rows[keep]
        groups = rows.groupby("query_id", sort=False).size().to_numpy()
        return spec.raw(rows), label[keep].astype(np.int64), groups, rows

    xf, yf, gf, _ = labelled(fit.sort_values("query_id", kind="stable"), config.drop_share, config.seed)
    xc, yc, gc, _ = labelled(calib.sort_values("query_id", kind="stable"), 1.0, config.seed)
    params = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
              "eval_at": [10], "seed": config.seed, "verbose": -1, "num_threads": torch.get_num_threads()}
    train_set = lgb.Dataset(xf, yf, group=gf)
    booster = lgb.train(params, train_set, num_boost_round=500,
                        valid_sets=[lgb.Dataset(xc, yc, group=gc, reference=train_set)],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    calib_new = drop_query_features(calib, spec, 1.0, config.seed)
    ndcg = evaluate(_run(calib_new, pd.Series(booster.predict(spec.raw(calib_new)))), calib_judged)["mean"]["ndcg@10"]
    return booster, {"best_iteration": int(booster.best_iteration), "calib_ndcg@10": round(ndcg, 4)}


def _run(rows: pd.DataFrame, score: pd.Series) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, item, s in zip(rows["query_id"], rows["item_id"], score.to_numpy()):
        run.setdefault(qid, {})[item] = float(s)
    return run
