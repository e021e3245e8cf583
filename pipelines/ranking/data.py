"""The ranker's training table: candidates and logged impressions of the training queries, their
features (request-time + the `ranking` FeatureService point-in-time) and their labels.

Rows per training query: the candidate model's top N (pipelines.retrieval.runner.ModelRunner.candidates,
the function eval and /search call) plus the items the logged ranker showed.

Labels:
- relevance: the human grade where the pair is judged (training split only: pipelines.signals.training),
  else the teacher's grade distribution as soft cumulative targets (the teacher_labels features of
  the row); neither -> no relevance loss on the row;
- engagement: clicks and orders of future traffic (pipelines.simulation.simulate with the store's
  world seed and new traffic seeds): one window trains the heads, the next is held out. The store's
  engagement features were aggregated over the days before as_of, so a label never sits inside its
  own feature's window. Two logs per window, each row keeping its position in each:
  - "logged": BM25's top 10, the production ranker of the engagement signal;
  - "explore": an exploration slice showing 10 of the query's N candidates drawn at random in random
    order. Without it the heads only ever see BM25's top 10, and on the other candidates (most of
    what the ranker scores) their output is extrapolation: on Home Depot it drove P(click) to ~1
    for never-shown items and the value model ranked those first.

Popularity out of query: item_profile's `popularity` counts the training split's judged pairs, so
a training query's judged items carry their own judgment in it: a label leaking into a feature
(on Home Depot the ranker learned "popularity > 0 means judged and relevant" on fit and calib
queries, and on new queries, whose judgments no feature holds, fell below BM25). The table keeps the
stored value (a served row equals its training row), the number of judged pairs popularity counts
and how many of them are the row's own; the trainer takes those out (train.out_of_query_popularity).

Roles: the teacher's fit/calib split of training queries (pipelines.teacher.calibrate.teacher_role):
the ranker fits on "fit" queries and chooses its value weights and epochs on "calib" queries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.atomic import atomic_path
from pipelines.features.pit import historical_features
from pipelines.features.repo import feature_store
from pipelines.ranking.config import RankerDataConfig
from pipelines.ranking.features import assemble, pair_features, store_views
from pipelines.retrieval.pair_features import PairScorer
from pipelines.retrieval.runner import ModelRunner
from pipelines.signals.item_profile import popularity_judgments
from pipelines.signals.spec import SignalContext
from pipelines.signals.training import training_judgments, training_queries
from pipelines.simulation import EXAMINATION, BM25Ranker, ClickConfig, fixed_ranker, simulate
from pipelines.teacher.calibrate import teacher_role
from pipelines.teacher.grades import to_grade
from pipelines.workspace import Workspace

SERVICE = "ranking"
TEACHER = ["grade_p0", "grade_p1", "grade_p2", "grade_p3"]  # teacher_labels' grade distribution
WINDOWS = ("fit", "heldout")  # future traffic windows: train the engagement heads / measure them
LOGS = ("logged", "explore")  # BM25's pages and the exploration slice (module docstring)
EVENTS = ("impressions", "clicks", "orders")
# item popularity's judged pairs: those of the row's own query, and all of them (data.py docstring)
OWN_JUDGMENTS, ALL_JUDGMENTS = "popularity_own_judgments", "popularity_judgments"
TABLE_LAYOUT = 2  # part of the cache key: a table cached by older code lacks columns this code reads


def training_table(ws: Workspace, config: RankerDataConfig,
                   console: Console | None = None) -> tuple[pd.DataFrame, dict]:
    """(rows, the ranking service's views as features.store_views returns them), cached in
    WORKSPACE/cache/ranking by the config and the state of the signal tables, the lake and the
    candidate model: a second `rank train` with other training settings skips the build."""
    console = console or Console(stderr=True)
    path = ws.cache_dir / "ranking" / f"table-{table_key(ws, config)}"
    if (path / "views.json").exists():
        console.print(f"ranker data: cached {path}")
        views = {n: (v[0], v[1]) for n, v in json.loads((path / "views.json").read_text()).items()}
        return pd.read_parquet(path / "rows.parquet"), views
    rows, views = build_table(ws, config, console)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        rows.to_parquet(tmp / "rows.parquet")
        (tmp / "views.json").write_text(json.dumps(views))
    return rows, views


def table_key(ws: Workspace, config: RankerDataConfig) -> str:
    """Table layout, config, size and mtime of every signal table, lake table and the candidate
    model's files."""
    dense = config.candidates.partition(":")[2]
    watched = [*sorted(ws.features_dir.glob("[!.]*")), *sorted(ws.lake.root.glob("[!.]*")),
               *(sorted((ws.models_dir / dense).glob("[!.]*")) if dense else [])]
    state = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in watched if p.is_file()]
    return hashlib.sha256(json.dumps([TABLE_LAYOUT, asdict(config), state]).encode()).hexdigest()[:16]


def build_table(ws: Workspace, config: RankerDataConfig, console: Console) -> tuple[pd.DataFrame, dict]:
    as_of = pd.Timestamp.now(tz="UTC")
    ctx = SignalContext(lake=ws.lake, as_of=as_of, seed=config.seed, quick=config.quick)
    queries = training_queries(ctx)
    queries = queries.assign(role=[teacher_role(t) for t in queries["query_norm"]])
    items = ws.lake.read("items")
    runner = ModelRunner(items, ws.models_dir, ws.cache_dir / "retrieval")

    console.print(f"ranker data: {len(queries):,} training queries, candidates {config.candidates} top {config.n}")
    candidates = runner.candidates(queries["query_norm"].tolist(), queries["query_id"].tolist(),
                                   config.candidates, config.n)
    shown = engagement_labels(ws, queries, candidates, config, console)
    rows = candidates.merge(shown, on=["query_id", "item_id"], how="outer")
    rows = rows.merge(queries[["query_id", "query_norm", "role"]], on="query_id", how="left")
    rows = rows.sort_values(["query_id", "fusion_score", "item_id"], ascending=[True, False, True],
                            na_position="last").reset_index(drop=True)

    rows, views = ranker_features(ws, runner, config.candidates, rows, as_of, console)

    judged = training_judgments(ctx, queries).groupby(["query_id", "item_id"], as_index=False)["relevance"].mean()
    rows = rows.merge(judged, on=["query_id", "item_id"], how="left")
    rows["grade"] = np.nan
    known = rows["relevance"].notna()
    rows.loc[known, "grade"] = to_grade(rows.loc[known, "relevance"])
    rows = popularity_counts(rows, ctx)
    console.print(f"ranker data: {len(rows):,} rows, {int(known.sum()):,} human-graded, "
                  f"{int((~known & rows[TEACHER[0]].notna()).sum()):,} teacher-labelled, "
                  f"{int(rows[[f'position_{log}' for log in LOGS]].notna().any(axis=1).sum()):,} shown pairs")
    return rows, views


def ranker_features(ws: Workspace, runner: ModelRunner, candidates: str, rows: pd.DataFrame, as_of: pd.Timestamp,
                    console: Console) -> tuple[pd.DataFrame, dict]:
    """rows (query_id, item_id, query_norm, ...) with the ranker's inputs as of `as_of`: request-time pair
    features over the candidate model's channels and the `ranking` service point-in-time; and the
    service's views (features.store_views). The pre-ranker's strong model reads the same."""
    with console.status(f"request-time pair features of {len(rows):,} rows"):
        scorer = PairScorer(runner.fused_channels(candidates), ws.lake.read("items"))
        request = pair_features(scorer, rows)
    store = feature_store(ws)
    service = store.get_feature_service(SERVICE)
    with console.status("point-in-time store features"):
        entities = rows[["query_id", "item_id"]].assign(event_timestamp=as_of)
        stored = historical_features(store, service, entities).drop(columns=["query_id", "item_id", "event_timestamp"])
    return assemble(rows, request, stored), store_views(store, service)


def popularity_counts(rows: pd.DataFrame, ctx: SignalContext) -> pd.DataFrame:
    """rows with the judged pairs item popularity counts: the row's own query's and all of them (the
    trainers take the own ones out: train.out_of_query_popularity)."""
    popular = popularity_judgments(ctx)
    own = popular.groupby(["query_id", "item_id"]).size().rename(OWN_JUDGMENTS).reset_index()
    rows = rows.merge(own, on=["query_id", "item_id"], how="left").fillna({OWN_JUDGMENTS: 0})
    return rows.assign(**{ALL_JUDGMENTS: len(popular)})


def engagement_labels(ws: Workspace, queries: pd.DataFrame, candidates: pd.DataFrame, config: RankerDataConfig,
                      console: Console) -> pd.DataFrame:
    """Per (query, item) shown in either log: position_<log>, and per log and window the
    impressions, clicks and orders (<event>_<log>_<window>; 0 where not shown)."""
    ctx = SignalContext(lake=ws.lake, as_of=pd.Timestamp.now(tz="UTC"), seed=config.seed, quick=config.quick)
    rng = np.random.default_rng(config.seed)
    explore = {qid: list(rng.permutation(group.to_numpy())[:len(EXAMINATION)])
               for qid, group in candidates.groupby("query_id", sort=True)["item_id"]}
    rankers = {"logged": BM25Ranker.for_catalog(ws.lake.read("items"), cache_dir=ws.cache_dir / "simulation"),
               "explore": fixed_ranker(explore)}
    truth = training_judgments(ctx, queries)
    clicks = ClickConfig(days=config.label_days)
    out = None
    for i, (log, ranker) in enumerate(rankers.items()):
        shown = None
        for offset, window in enumerate(WINDOWS, start=1):
            with console.status(f"simulated traffic: {log} log, {window} window ({config.label_days} days)"):
                sim = simulate(queries, ranker, truth, clicks, seed=config.seed,
                               traffic_seed=config.seed + 1000 * offset + 100 * i)
            events = sim.events.astype({"query_id": str, "item_id": str})
            totals = events.groupby(["query_id", "item_id", "position"], as_index=False, observed=True)[
                list(EVENTS)].sum().rename(columns={"position": f"position_{log}"})
            totals = totals.rename(columns={e: f"{e}_{log}_{window}" for e in EVENTS})
            keys = ["query_id", "item_id", f"position_{log}"]
            shown = totals if shown is None else shown.merge(totals, on=keys, how="outer")
        out = shown if out is None else out.merge(shown, on=["query_id", "item_id"], how="outer")
    counts = [c for c in out.columns if c.endswith(WINDOWS)]
    out[counts] = out[counts].fillna(0)
    return out
