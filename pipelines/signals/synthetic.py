"""A stand-in teacher: the teacher_labels table without fitting a model, for plumbing tests.

Tests of apply, materialize, point-in-time sets and online reads need a realistic teacher_labels
table, not a fitted cascade (pipelines.signals.teacher_labels; tests/test_teacher.py runs that one).
This producer writes the same contract in milliseconds: grades derived from the training queries'
human judgments plus seeded noise, random unjudged negatives, and two releases (v1 noisier,
14 days before as_of; v2 one day before) so point-in-time joins have versions to choose between.
Dev-split judgments are never read (pipelines.signals.training).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.signals.spec import SignalContext
from pipelines.signals.training import training_judgments, training_queries

NEGATIVES_PER_QUERY = 10


def candidates(ctx: SignalContext) -> pd.DataFrame:
    """Judged pairs of training queries plus seeded random negatives, with a latent grade 0..3."""
    rng = np.random.default_rng(ctx.seed)
    queries = training_queries(ctx)
    judged = training_judgments(ctx, queries)
    items = ctx.lake.read("items")["item_id"].to_numpy()
    neg = pd.DataFrame({
        "query_id": np.repeat(queries["query_id"].to_numpy(), NEGATIVES_PER_QUERY),
        "item_id": rng.choice(items, size=len(queries) * NEGATIVES_PER_QUERY),
    })
    pairs = pd.concat([judged, neg], ignore_index=True)
    pairs = pairs.drop_duplicates(["query_id", "item_id"], keep="first").reset_index(drop=True)
    human = pairs["relevance"].astype("float64")
    pairs["latent"] = np.where(human.notna(), (human - 1.0) * 1.5, rng.uniform(0, 0.6, len(pairs)))
    return pairs


def _grade_probs(grade: np.ndarray) -> np.ndarray:
    logits = -((np.arange(4)[None, :] - grade[:, None]) ** 2) / 0.5
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def teacher_labels(ctx: SignalContext) -> pd.DataFrame:
    """Two teacher releases: v1 (noisier) 14 days before as_of, v2 one day before."""
    pairs = candidates(ctx)
    rng = np.random.default_rng(ctx.seed + 1)
    frames = []
    for version, noise, age in (("synthetic-v1", 0.7, 14), ("synthetic-v2", 0.35, 1)):
        grade = np.clip(pairs["latent"].to_numpy() + rng.normal(0, noise, len(pairs)), 0, 3)
        p = _grade_probs(grade)
        ts = ctx.as_of - pd.Timedelta(days=age)
        frames.append(pd.DataFrame({
            "query_id": pairs["query_id"], "item_id": pairs["item_id"],
            "event_timestamp": ts, "created_timestamp": ts,
            **{f"grade_p{k}": p[:, k].astype("float32") for k in range(4)},
            "expected_grade": (p @ np.arange(4)).astype("float32"),
            "confidence": p.max(axis=1).astype("float32"),
            "teacher_stage": np.int64(1 if version.endswith("v1") else 2),
            "teacher_version": version,
            "human_grade": pairs["relevance"].astype("float32"),
        }))
    return pd.concat(frames, ignore_index=True)
