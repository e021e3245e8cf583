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


def light_ranks(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(0-based rank of each row by `light` within its query, ties by item id; the query's size)."""
    order = np.lexsort((frame["item_id"].astype(str).to_numpy(), -frame["light"].to_numpy(np.float64),
                        frame["query_id"].astype(str).to_numpy()))
    ranks = np.empty(len(frame), np.int64)
    ranks[order] = frame.iloc[order].groupby("query_id", sort=False).cumcount().to_numpy()
    sizes = frame.groupby("query_id", sort=False)["query_id"].transform("size").to_numpy()
    return ranks, sizes


def band(sizes: np.ndarray, n_keep: int, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, B) per row: the routed band of its request."""
    routed = np.where(sizes > n_keep, np.floor(budget * sizes + 1e-9).astype(np.int64), 0)
    lo = np.clip(np.minimum(n_keep - routed // 2, sizes - routed), 0, None)
    return np.where(sizes > n_keep, lo, sizes), routed


def route(frame: pd.DataFrame, n_keep: int, budget: float) -> np.ndarray:
    """Bool per row (query_id, item_id, light): sent to the strong model."""
    ranks, sizes = light_ranks(frame)
    lo, width = band(sizes, n_keep, budget)
    return (ranks >= lo) & (ranks < lo + width)


def keep(frame: pd.DataFrame, n_keep: int, budget: float) -> np.ndarray:
    """Bool per row (query_id, item_id, light, strong: read on routed rows only): passed to the ranker."""
    frame = frame.reset_index(drop=True)
    ranks, sizes = light_ranks(frame)
    lo, width = band(sizes, n_keep, budget)
    routed = (ranks >= lo) & (ranks < lo + width)
    kept = ranks < lo
    if routed.any():
        band_rows = frame.loc[routed, ["query_id", "item_id"]].assign(strong=frame.loc[routed, "strong"].to_numpy())
        band_rows = band_rows.sort_values(["query_id", "strong", "item_id"], ascending=[True, False, True])
        place = band_rows.groupby("query_id", sort=False).cumcount()
        slots = (n_keep - lo)[band_rows.index]
        kept[band_rows.index[place.to_numpy() < slots]] = True
    return kept
