"""Routing: which candidates the strong model re-scores, and which N the ranker then sees.

The rule (margin to the cut-off): per request, the light model orders its m retrieved candidates
(ties by item id). With budget b, B = floor(b * m) candidates go to the strong model: those whose
light rank lies in the band [lo, lo + B), lo = N - floor(B / 2) (centred on the cut-off N, where
the light model's decision is least sure), moved up to fit in the list (lo <= m - B) and not above
its top (lo >= 0). Candidates ranked above the band are kept without a
second look, those below are dropped, and the strong model's best N - lo of the band fill the
remaining places. A request with m <= N keeps everything and routes nothing.

So a candidate's route is a function of its own light score and its request's light scores only:
requests scored together in one batch never affect each other, and the strong model runs on at
most b * m candidates of every request (b = 0: light everywhere; b = 1: strong everywhere).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ranks_within(query_ids, score: np.ndarray, item_ids) -> tuple[np.ndarray, np.ndarray]:
    """(0-based rank of each row by `score`, best first, within its query, ties by item id; the size of
    its query). numpy throughout: this runs on every request."""
    codes, _ = pd.factorize(np.asarray(query_ids))
    items = np.asarray(item_ids).astype(str)
    order = np.lexsort((items, -np.asarray(score, np.float64), codes))
    counts = np.bincount(codes, minlength=codes.max() + 1 if len(codes) else 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = np.empty(len(codes), np.int64)
    ranks[order] = np.arange(len(codes)) - starts[codes[order]]
    return ranks, counts[codes]


def band(sizes: np.ndarray, n_keep: int, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, B) per row: the routed band of its request."""
    routed = np.where(sizes > n_keep, np.floor(budget * sizes + 1e-9).astype(np.int64), 0)
    lo = np.clip(np.minimum(n_keep - routed // 2, sizes - routed), 0, None)
    return np.where(sizes > n_keep, lo, sizes), routed


def route(frame: pd.DataFrame, n_keep: int, budget: float) -> np.ndarray:
    """Bool per row (query_id, item_id, light): sent to the strong model."""
    ranks, sizes = ranks_within(frame["query_id"], frame["light"], frame["item_id"])
    lo, width = band(sizes, n_keep, budget)
    return (ranks >= lo) & (ranks < lo + width)


def keep(frame: pd.DataFrame, n_keep: int, budget: float) -> np.ndarray:
    """Bool per row (query_id, item_id, light, strong: read on routed rows only): passed to the ranker."""
    ranks, sizes = ranks_within(frame["query_id"], frame["light"], frame["item_id"])
    lo, width = band(sizes, n_keep, budget)
    routed = (ranks >= lo) & (ranks < lo + width)
    kept = ranks < lo
    if routed.any():
        idx = np.flatnonzero(routed)
        place, _ = ranks_within(frame["query_id"].to_numpy()[idx], frame["strong"].to_numpy()[idx],
                                frame["item_id"].to_numpy()[idx])
        kept[idx[place < (n_keep - lo)[idx]]] = True
    return kept
