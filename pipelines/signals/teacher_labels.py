"""The teacher_labels signal: calibrated graded relevance from a two-stage cascade, per (query, item).

Pairs labelled: every candidate of the retrieval prior (the union of the channels' top 100 for each
training query; pipelines.signals.retrieval_prior) plus every judged pair of a training query the channels
missed, so each human grade of the training split has its row. Dev queries are never labelled, and
their judgments are never read: pipelines.signals.training filters by split before anything looks.

Fitting (pipelines.teacher): training queries are split by hash into "fit" (80%) and "calib" (20%)
(calibrate.teacher_role). Stage 1 (gradient boosting over channel features) and the cross-encoder
(MiniLM-L6, ordinal head) are fitted on fit queries: their human-graded pairs plus
`negatives_per_query` weak negatives per query, unjudged candidates that no channel ranked in its
top `negative_min_rank`, labelled grade 0 with weight `negative_weight`. Why the negatives: Home
Depot judged mostly what its own search showed (84% of judged pairs are relevant), while ~97% of the
candidates here were never judged; a teacher that only saw judged pairs has never seen the deep,
off-topic candidates it must label and rates them like the judged ones (measured: 96% of unjudged
candidates came out P(relevant) > 0.5 without negatives, 52% with). Stage 2 is the cross-encoder's
output pooled with stage 1's (cascade.py). The calibrators (isotonic, per stage) and the cascade
threshold are fitted on calib queries: by default on their candidate population, judged pairs plus
a uniform sample of unjudged candidates (pipelines.teacher.calibrate says why); labels_summary.json
records the share of unjudged pairs labelled P(relevant) >= 0.5 per version. The fitted teacher is
saved under work_dir/teacher and reused while its fingerprint (config + training rows) holds.

Output: two snapshots of ONE run, written as if they were two releases so that point-in-time
joins have versions to choose between (they are not two fitted releases; a second `signals build`
on a later day writes the next pair):
- "teacher-v1" = stage 1 everywhere, back-dated to as_of - 14 days;
- "teacher-v2" = the cascade (stage 2 where stage 1 is unsure), stamped as_of - 1 day. One run may
  escalate at most `cascade.max_pairs` pairs (the least confident ones): ~1.5M candidates times
  ~4 ms of cross-encoder each would take hours on 2 cores, so the cap keeps `signals build` in budget;
per pair grade_p0..3, expected_grade, confidence (max probability), teacher_stage, teacher_version
and human_grade (the raw 1..3 human relevance where a training query's pair was judged, else null;
written from the lake, never from a model).

The candidate table is the prior producer's own (prior.candidate_table, cached in work_dir), so
one `signals build` searches the catalog once for both producers.

With the Ray engine (ctx.ray), catalog and query encoding and the labelling pass's cross-encoder run
on a Ray Data actor pool and write the same table (pipelines.ray_data); fitting stays in-process.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureView, Field
from feast.types import Float32, Int64, String
from rich.console import Console

from pipelines.atomic import write_json
from pipelines.retrieval import build_channels
from pipelines.retrieval.pair_features import PairScorer
from pipelines.signals.entities import PAIR
from pipelines.signals.retrieval_prior import candidate_table, retrieval_cache
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source, table_columns
from pipelines.signals.training import training_judgments, training_queries
from pipelines.teacher.calibrate import relevance_summary, teacher_role
from pipelines.teacher.cascade import Teacher, TeacherConfig, fit_teacher

# (teacher_version, cascade stages, days before as_of): two back-dated snapshots of one run
VERSIONS = (("teacher-v1", 1, 14), ("teacher-v2", 2, 1))
_SCRATCH: tempfile.TemporaryDirectory | None = None  # models of runs without a work_dir


# Calibrated graded relevance (0..3) from the teacher cascade; human grades kept apart.
teacher_labels_fv = FeatureView(
    name="teacher_labels",
    entities=PAIR,
    ttl=timedelta(days=365),
    schema=[
        Field(name="grade_p0", dtype=Float32, description="Calibrated P(grade 0: irrelevant)", tags=bounds(0, 1)),
        Field(name="grade_p1", dtype=Float32, description="Calibrated P(grade 1: partly relevant)", tags=bounds(0, 1)),
        Field(name="grade_p2", dtype=Float32, description="Calibrated P(grade 2: relevant)", tags=bounds(0, 1)),
        Field(name="grade_p3", dtype=Float32, description="Calibrated P(grade 3: exact match)", tags=bounds(0, 1)),
        Field(name="expected_grade", dtype=Float32, description="Expected grade, 0..3: sum of grade x P(grade)",
              tags=bounds(0, 3)),
        Field(name="confidence", dtype=Float32, description="Largest of the four grade probabilities",
              tags=bounds(0, 1)),
        Field(name="teacher_stage", dtype=Int64,
              description="Stage that labelled the pair: 1 gradient boosting, 2 cross-encoder",
              tags=bounds(1, 2)),
        Field(name="teacher_version", dtype=String,
              description="Snapshot that wrote the row: teacher-v1 (stage 1) or teacher-v2 (cascade)"),
        Field(name="human_grade", dtype=Float32, description="Human relevance 1..3 of a training judgment, else null",
              tags=bounds(1, 3)),
    ],
    source=signal_source("teacher_labels"),
    description=("Calibrated graded relevance (0 irrelevant .. 3 exact match) of a (query, item) pair from the"
                 " teacher cascade: gradient boosting, then the cross-encoder where it is unsure. Two snapshots"
                 " per run: teacher-v1 (stage 1 only) 14 days before the run's as-of time, teacher-v2 1 day before."),
    tags={"signal": "teacher", "grain": "pair"},
)
COLUMNS = table_columns(teacher_labels_fv, PAIR)  # the table, in the order producers write it


def label_pairs(queries: pd.DataFrame, prior: pd.DataFrame, judgments: pd.DataFrame) -> pd.DataFrame:
    """Candidates plus missed judged pairs, with query text, human relevance and the query's role."""
    pairs = prior.merge(judgments, on=["query_id", "item_id"], how="outer")
    pairs = pairs.merge(queries[["query_id", "query_norm"]], on="query_id", how="inner")
    pairs["role"] = pairs["query_norm"].map(teacher_role)
    return pairs.sort_values(["query_id", "item_id"]).reset_index(drop=True)


def weak_negatives(pairs: pd.DataFrame, config: TeacherConfig) -> pd.Index:
    """Row labels of the sampled weak negatives: unjudged, outside every channel's top-N."""
    best = pairs[["rank_bm25", "rank_dense", "rank_char"]].min(axis=1)
    pool = pairs[pairs["relevance"].isna() & (best > config.negative_min_rank)]
    shuffled = pool.sample(frac=1.0, random_state=config.seed)
    picked = shuffled.groupby("query_id", sort=False).head(config.negatives_per_query)
    return picked.index.sort_values()


def teacher_work_dir(ctx: SignalContext) -> Path:
    """Where the fitted teacher lives: ctx.work_dir/teacher, or a per-process temp dir without one."""
    global _SCRATCH
    if ctx.work_dir is not None:
        return Path(ctx.work_dir) / "teacher"
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="unisup-teacher-")
    return Path(_SCRATCH.name)


def fitted_teacher(ctx: SignalContext, config: TeacherConfig,
                   console: Console) -> tuple[Teacher, pd.DataFrame, PairScorer, dict]:
    """Channels, the training queries' pairs and a teacher fitted on them (reused from ctx.work_dir
    when nothing it depends on changed). Returns teacher, pairs, scorer and wall seconds per step."""
    seconds, clock = {}, time.perf_counter()
    queries = training_queries(ctx)
    items = ctx.lake.read("items")
    judgments = training_judgments(ctx, queries)
    channels = build_channels(items, cache_dir=retrieval_cache(ctx), ray=ctx.ray)
    seconds["channels"], clock = time.perf_counter() - clock, time.perf_counter()
    prior = candidate_table(ctx, channels, queries, items)
    pairs = label_pairs(queries, prior, judgments)
    seconds["candidates"], clock = time.perf_counter() - clock, time.perf_counter()
    console.print(f"teacher: {len(pairs):,} pairs over {pairs['query_id'].nunique():,} training queries, "
                  f"{pairs['relevance'].notna().sum():,} judged")
    scorer = PairScorer(channels, items)
    negatives = weak_negatives(pairs, config)
    teacher = fit_teacher(pairs, negatives, scorer, teacher_work_dir(ctx), config, console)
    seconds["fit"] = time.perf_counter() - clock
    return teacher, pairs, scorer, seconds


def grade_columns(probs: np.ndarray) -> dict[str, np.ndarray]:
    """The view's grade features from (n, 4) calibrated grade probabilities."""
    return {**{f"grade_p{g}": probs[:, g].astype(np.float32) for g in range(4)},
            "expected_grade": (probs @ np.arange(4)).astype(np.float32),
            "confidence": probs.max(axis=1).astype(np.float32)}


def teacher_labels(ctx: SignalContext, config: TeacherConfig | None = None) -> pd.DataFrame:
    """Two releases of calibrated grades for every candidate pair of the training queries."""
    console = Console(stderr=True)
    config = config or (TeacherConfig.quick(ctx.seed) if ctx.quick else TeacherConfig(seed=ctx.seed))
    teacher, pairs, scorer, seconds = fitted_teacher(ctx, config, console)
    clock = time.perf_counter()
    labels = teacher.label(pairs, scorer, max_pairs=config.cascade.max_pairs, ray=ctx.ray)
    seconds["label"] = time.perf_counter() - clock
    frames = []
    for version, stages, age in VERSIONS:
        ts = pd.Timestamp(ctx.as_of) - pd.Timedelta(days=age)
        probs = labels[f"probs{stages}"]
        frames.append(pd.DataFrame({
            "query_id": pairs["query_id"], "item_id": pairs["item_id"],
            "event_timestamp": ts, "created_timestamp": ts,
            **grade_columns(probs),
            "teacher_stage": labels[f"stage{stages}"].astype(np.int64),
            "teacher_version": version,
            "human_grade": pairs["relevance"].astype(np.float32),
        }))
    escalated = labels["stage2"] == 2
    unjudged = pairs["relevance"].isna().to_numpy()
    summary = {"pairs": len(pairs), "escalated": int(escalated.sum()),
               "escalated_share": float(escalated.mean()),
               "unjudged": {version: relevance_summary(labels[f"probs{stages}"][unjudged])
                            for version, stages, _ in VERSIONS},
               "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
               "label_seconds": labels["seconds"],
               "fit_seconds": teacher.meta["seconds"], "config": asdict(config),
               "ray": asdict(ctx.ray) if ctx.ray else None}
    write_json(teacher_work_dir(ctx) / "labels_summary.json", summary, indent=2, default=str)
    console.print(f"teacher: stage 2 on {summary['escalated']:,} of {len(pairs):,} pairs "
                  f"({summary['escalated_share']:.1%}); wall seconds {summary['wall_seconds']}")
    return pd.concat(frames, ignore_index=True)[COLUMNS]


SIGNAL = Signal(teacher_labels_fv, producer=teacher_labels, online_features=("expected_grade", "confidence"),
                ranker_features=("grade_p0", "grade_p1", "grade_p2", "grade_p3", "expected_grade", "confidence"))
