"""Placeholder producers for the three pair signals, until the real ones land (issue 4).

They write real tables through the real Feast path, derived from the lake's human judgments of
*training* queries plus seeded noise and random negatives, so downstream code (apply,
materialize, datasets, serving) runs on realistic shapes. Dev-split judgments are never read.
Snapshots at several dates (teacher v1/v2, daily engagement) give point-in-time joins something
to choose between.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.signals.spec import SignalContext

NEGATIVES_PER_QUERY = 10
EXAMINATION = np.array([0.68, 0.61, 0.48, 0.34, 0.28, 0.20, 0.11, 0.10, 0.08, 0.06])
CHANNELS = ("rank_bm25", "rank_dense", "rank_char")
ABSENT_RANK = 101
RRF_K = 60


def candidates(ctx: SignalContext) -> pd.DataFrame:
    """Judged pairs of training queries plus seeded random negatives, with a latent grade 0..3."""
    rng = np.random.default_rng(ctx.seed)
    queries = ctx.lake.read("queries")
    train = queries.loc[queries["split"] == "train", "query_id"]
    judged = ctx.lake.read("judgments")
    judged = judged[judged["query_id"].isin(train)]
    if ctx.quick:
        keep = train.sample(n=min(len(train), 300), random_state=ctx.seed)
        judged = judged[judged["query_id"].isin(keep)]
        train = keep
    items = ctx.lake.read("items")["item_id"].to_numpy()
    neg = pd.DataFrame({
        "query_id": np.repeat(train.to_numpy(), NEGATIVES_PER_QUERY),
        "item_id": rng.choice(items, size=len(train) * NEGATIVES_PER_QUERY),
    })
    pairs = pd.concat([judged[["query_id", "item_id", "relevance"]], neg], ignore_index=True)
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


def _ranks(pairs: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    out = pairs[["query_id", "item_id"]].copy()
    present = np.zeros(len(pairs), dtype="int64")
    fusion = np.zeros(len(pairs))
    for channel in CHANNELS:
        score = pairs["latent"].to_numpy() + rng.normal(0, 0.8, len(pairs))
        rank = pd.Series(score).groupby(pairs["query_id"].to_numpy()).rank(ascending=False, method="first")
        hit = rng.uniform(size=len(pairs)) < 0.45 + 0.15 * pairs["latent"].to_numpy()
        rank = np.where(hit, rank.to_numpy(), ABSENT_RANK).astype("int64")
        out[channel] = rank
        present += hit
        fusion += np.where(hit, 1.0 / (RRF_K + rank), 0.0)
    out["fusion_score"] = fusion.astype("float32")
    out["agreement"] = present
    return out


def retrieval_prior(ctx: SignalContext) -> pd.DataFrame:
    pairs = candidates(ctx)
    out = _ranks(pairs, np.random.default_rng(ctx.seed + 2))
    ts = ctx.as_of - pd.Timedelta(days=1)
    return out.assign(event_timestamp=ts, created_timestamp=ts)


def engagement_stats(ctx: SignalContext) -> pd.DataFrame:
    """Daily snapshots over the last week of a position-based click model on the BM25 top 10."""
    rng = np.random.default_rng(ctx.seed + 3)
    pairs = candidates(ctx)
    ranks = _ranks(pairs, np.random.default_rng(ctx.seed + 2))
    shown = ranks["rank_bm25"].to_numpy() <= len(EXAMINATION)
    pairs, pos = pairs[shown].reset_index(drop=True), ranks.loc[shown, "rank_bm25"].to_numpy() - 1
    history, snapshots = 30 + 7, 7 if not ctx.quick else 3
    attract = 0.05 + 0.85 * pairs["latent"].to_numpy() / 3.0
    daily_imp = rng.poisson(3.0, size=(history, len(pairs)))
    daily_clk = rng.binomial(daily_imp, EXAMINATION[pos] * attract)
    daily_ord = rng.binomial(daily_clk, 0.1)
    frames = []
    for s in range(snapshots):
        end = history - snapshots + s + 1  # exclusive day index of this snapshot
        w7, w30 = slice(end - 7, end), slice(end - 30, end)
        imp30, clk30 = daily_imp[w30].sum(0), daily_clk[w30].sum(0)
        ipw = (daily_clk[w30] / EXAMINATION[pos]).sum(0)
        ts = ctx.as_of - pd.Timedelta(days=snapshots - s - 1)
        frames.append(pd.DataFrame({
            "query_id": pairs["query_id"], "item_id": pairs["item_id"],
            "event_timestamp": ts, "created_timestamp": ts,
            "impressions_7d": daily_imp[w7].sum(0), "clicks_7d": daily_clk[w7].sum(0),
            "impressions_30d": imp30, "clicks_30d": clk30,
            "carts_30d": rng.binomial(clk30, 0.3), "orders_30d": daily_ord[w30].sum(0),
            "ctr_smoothed_30d": ((clk30 + 1.0) / (imp30 + 20.0)).astype("float32"),
            "ctr_debiased_30d": (ipw / np.maximum(imp30, 1)).astype("float32"),
        }))
    return pd.concat(frames, ignore_index=True)
