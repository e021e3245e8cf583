"""The ranker's training table: candidates and logged impressions of the training queries, their
features (request-time + the `ranking` FeatureService point-in-time) and their labels.

Rows per training query: the candidate model's top N (pipelines.retrieval.runner.ModelRunner.candidates,
the function eval and /search call) plus the items the logged ranker showed.

Labels:
- relevance: the human grade where the pair is judged (training split only: pipelines.signals.training),
  else the teacher's grade distribution as soft cumulative targets (the teacher_labels features of
  the row); neither -> no relevance loss on the row;
- engagement: clicks and orders of future traffic (pipelines.simulation.simulate with the store's
  world seed and new traffic seeds, BM25 as the logged ranker, as in the engagement signal): one
  window trains the heads, the next is held out. The store's engagement features were aggregated
  over the days before as_of, so a label never sits inside its own feature's window.

Roles: the teacher's fit/calib split of training queries (pipelines.teacher.calibrate.teacher_role):
the ranker fits on "fit" queries and chooses its value weights and epochs on "calib" queries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.features.pit import historical_features
from pipelines.features.repo import feature_store
from pipelines.ranking.config import RankerDataConfig
from pipelines.ranking.features import assemble, pair_features, store_views
from pipelines.retrieval.pair_features import PairScorer
from pipelines.retrieval.runner import ModelRunner
from pipelines.signals.spec import SignalContext
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import BM25Ranker, ClickConfig, simulate
from pipelines.teacher.calibrate import teacher_role
from pipelines.teacher.grades import to_grade
from pipelines.workspace import Workspace

SERVICE = "ranking"
TEACHER = ["grade_p0", "grade_p1", "grade_p2", "grade_p3"]  # teacher_labels' grade distribution
WINDOWS = ("fit", "heldout")  # future traffic windows: train the engagement heads / measure them


def training_table(ws: Workspace, config: RankerDataConfig,
                   console: Console | None = None) -> tuple[pd.DataFrame, dict]:
    """(rows, the ranking service's views as features.store_views returns them)."""
    console = console or Console(stderr=True)
    as_of = pd.Timestamp.now(tz="UTC")
    ctx = SignalContext(lake=ws.lake, as_of=as_of, seed=config.seed, quick=config.quick)
    queries = training_queries(ctx)
    queries = queries.assign(role=[teacher_role(t) for t in queries["query_norm"]])
    items = ws.lake.read("items")
    runner = ModelRunner(items, ws.models_dir, ws.cache_dir / "retrieval")

    console.print(f"ranker data: {len(queries):,} training queries, candidates {config.candidates} top {config.n}")
    candidates = runner.candidates(queries["query_norm"].tolist(), queries["query_id"].tolist(),
                                   config.candidates, config.n)
    shown = engagement_labels(ws, queries, config, console)
    rows = candidates.merge(shown, on=["query_id", "item_id"], how="outer")
    rows = rows.merge(queries[["query_id", "query_norm", "role"]], on="query_id", how="left")
    rows = rows.sort_values(["query_id", "fusion_score", "item_id"], ascending=[True, False, True],
                            na_position="last").reset_index(drop=True)

    with console.status("request-time pair features"):
        scorer = PairScorer(runner.fused_channels(config.candidates), items)
        request = pair_features(scorer, rows)
    store = feature_store(ws)
    service = store.get_feature_service(SERVICE)
    with console.status("point-in-time store features"):
        entities = rows[["query_id", "item_id"]].assign(event_timestamp=as_of)
        stored = historical_features(store, service, entities).drop(columns=["query_id", "item_id", "event_timestamp"])
    rows = assemble(rows, request, stored)

    judged = training_judgments(ctx, queries).groupby(["query_id", "item_id"], as_index=False)["relevance"].mean()
    rows = rows.merge(judged, on=["query_id", "item_id"], how="left")
    rows["grade"] = np.nan
    known = rows["relevance"].notna()
    rows.loc[known, "grade"] = to_grade(rows.loc[known, "relevance"])
    console.print(f"ranker data: {len(rows):,} rows, {int(known.sum()):,} human-graded, "
                  f"{int((~known & rows[TEACHER[0]].notna()).sum()):,} teacher-labelled, "
                  f"{int(rows['position'].notna().sum()):,} logged impressions")
    return rows, store_views(store, service)


def engagement_labels(ws: Workspace, queries: pd.DataFrame, config: RankerDataConfig,
                      console: Console) -> pd.DataFrame:
    """Per (query, item) the logged ranker showed: position, and per window impressions, clicks, orders."""
    ctx = SignalContext(lake=ws.lake, as_of=pd.Timestamp.now(tz="UTC"), seed=config.seed, quick=config.quick)
    ranker = BM25Ranker.for_catalog(ws.lake.read("items"), cache_dir=ws.cache_dir / "simulation")
    truth = training_judgments(ctx, queries)
    clicks = ClickConfig(days=config.label_days)
    out = None
    for offset, window in enumerate(WINDOWS, start=1):
        with console.status(f"simulated traffic, {window} window ({config.label_days} days)"):
            log = simulate(queries, ranker, truth, clicks, seed=config.seed,
                           traffic_seed=config.seed + 1000 * offset)
        events = log.events.astype({"query_id": str, "item_id": str})
        totals = events.groupby(["query_id", "item_id", "position"], as_index=False, observed=True)[
            ["impressions", "clicks", "orders"]].sum()
        totals = totals.rename(columns={c: f"{c}_{window}" for c in ("impressions", "clicks", "orders")})
        out = totals if out is None else out.merge(totals, on=["query_id", "item_id", "position"], how="outer")
    counts = [c for c in out.columns if c.endswith(WINDOWS)]
    out[counts] = out[counts].fillna(0)
    return out
