"""Reciprocal-rank fusion of the channels and the per-pair prior table.

    fusion_score(q, d) = sum over channels c holding d in q's top-100 of  w_c / (K + rank_c(q, d))

with K = 60 and w_c = 1 (Cormack, Clarke & Buettcher, SIGIR 2009). Why ranks and not scores: BM25
scores are unbounded and query-length dependent, TF-IDF and MiniLM cosines live on different scales,
so any score mix needs per-query normalisation plus fitted weights, and weights fitted on training
judgments would leak the judges into a signal the teacher and the trainer also read. RRF needs no
fitting and no labels. K = 60 flattens the head: rank 1 is worth 1/61 and rank 10 is worth 1/70, so
an item two channels place at 30 (2/90) outranks one a single channel places at 1 (1/61) — agreement
between independent channels is stronger evidence than one channel's confidence, which is the point
of a prior. Tuning was checked, on training queries only: over K in {10, 30, 60, 120} and BM25 /
char weights 0.7..2, recall@100 of the fused list stayed within 0.772..0.780 (0.777 here) on the 7,499
Home Depot training queries, so the textbook default stays and the weights remain a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.retrieval import MISSING, Hits

RRF_K = 60
ABSENT = 101  # the rank of an item a channel did not return in its top 100


def rrf(ranks: np.ndarray, k: int = RRF_K, weights: Sequence[float] | None = None) -> np.ndarray:
    """fusion_score per row of ranks (n_pairs, n_channels), ABSENT entries contributing 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    w = np.ones(ranks.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.where(ranks < ABSENT, w / (k + ranks), 0.0).sum(axis=1)


def _long(name: str, ids: np.ndarray, query_ids: np.ndarray) -> pd.DataFrame:
    """One channel's hits as rows (query_id, item_id, rank_<name>), empty slots dropped."""
    n, k = ids.shape
    frame = pd.DataFrame({
        "query_id": np.repeat(query_ids, k),
        "item_id": ids.ravel(),
        f"rank_{name}": np.tile(np.arange(1, k + 1, dtype=np.int64), n),
    })
    return frame[frame["item_id"] != MISSING]


def prior_table(hits: dict[str, Hits], query_ids: Sequence[str], k: int = RRF_K,
                weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Union of the channels' lists per query: rank_<channel> (ABSENT if missing), fusion_score,
    agreement (channels holding the pair), sorted by query then fusion_score descending."""
    query_ids = np.asarray(query_ids, dtype=object)
    table = None
    for name, (ids, _scores) in hits.items():
        if len(ids) != len(query_ids):
            raise ValueError(f"channel {name!r}: {len(ids)} result lists for {len(query_ids)} queries")
        part = _long(name, ids, query_ids)
        table = part if table is None else table.merge(part, on=["query_id", "item_id"], how="outer")
    cols = [f"rank_{name}" for name in hits]
    table[cols] = table[cols].fillna(ABSENT).astype(np.int64)
    ranks = table[cols].to_numpy()
    table["fusion_score"] = rrf(ranks, k, weights).astype(np.float32)
    table["agreement"] = (ranks < ABSENT).sum(axis=1).astype(np.int64)
    table = table.sort_values(["query_id", "fusion_score", "item_id"], ascending=[True, False, True])
    return table.reset_index(drop=True)


def fused_run(table: pd.DataFrame, depth: int = 100) -> dict[str, dict[str, float]]:
    """The fusion's own ranking: each query's top `depth` pairs by fusion_score, as a run dict."""
    top = table.groupby("query_id", sort=False).head(depth)
    run: dict[str, dict[str, float]] = {}
    for qid, item, score in zip(top["query_id"], top["item_id"], top["fusion_score"]):
        run.setdefault(qid, {})[item] = float(score)
    return run
