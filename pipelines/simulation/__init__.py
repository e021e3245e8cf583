"""Simulated users: a position-based click model replayed against any ranker (see clicks.py).

The engagement signal (pipelines.signals.engagement_stats) replays BM25, the "current production"
ranker, on the training queries. An A/B comparison replays another ranker on the same queries with
the same seed: traffic and every pair's attractiveness are then identical, only the ranking differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import write_parquet
from pipelines.simulation.clicks import (
    EMPTY,
    EXAMINATION,
    ClickConfig,
    ClickLog,
    Ranker,
    attractiveness,
    item_popularity,
    query_frequency,
    simulate,
)

__all__ = ["EMPTY", "EXAMINATION", "BM25Ranker", "ClickConfig", "ClickLog", "Ranker", "attractiveness",
           "fixed_ranker", "item_popularity", "query_frequency", "simulate"]


def fixed_ranker(lists: dict[str, list[str]], depth: int = len(EXAMINATION)) -> Ranker:
    """A Ranker showing precomputed lists, looked up by the id of the normalized query text."""
    from pipelines.text import normalize_query, query_id

    def rank(texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), depth), EMPTY, dtype=object)
        for i, text in enumerate(texts):
            items = lists.get(query_id(normalize_query(text)), [])[:depth]
            out[i, :len(items)] = items
        return out

    return rank


class BM25Ranker:
    """The "current production" ranker: BM25 (pipelines.retrieval.bm25) top `depth` over the catalog.

    With a cache_dir, the index is saved per catalog hash and result lists per query set, so a
    second run of the engagement producer skips both the indexing and the searching."""

    def __init__(self, channel, depth: int = len(EXAMINATION), cache_dir: Path | None = None):
        self.channel = channel
        self.depth = depth
        self.cache_dir = cache_dir

    @classmethod
    def for_catalog(cls, items: pd.DataFrame, cache_dir: Path | None = None,
                    depth: int = len(EXAMINATION)) -> BM25Ranker:
        from pipelines.retrieval import catalog_hash
        from pipelines.retrieval.bm25 import BM25Channel

        if cache_dir is None:
            return cls(BM25Channel.build(items["item_id"].astype(str).to_numpy(),
                                         items["title"].astype(str).tolist()), depth)
        cache_dir = Path(cache_dir) / f"bm25-{catalog_hash(items)}"
        index = cache_dir / "index"
        if (index / "item_ids.json").exists():
            channel = BM25Channel.load(index)
        else:
            channel = BM25Channel.build(items["item_id"].astype(str).to_numpy(),
                                        items["title"].astype(str).tolist())
            channel.save(index)
        return cls(channel, depth, cache_dir)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), depth) item ids, best first, EMPTY where BM25 matches fewer items."""
        texts = list(texts)
        cached = self._cache_path(texts)
        if cached is not None and cached.exists():
            flat = pq.read_table(cached).column("item_id").to_numpy(zero_copy_only=False)
            return flat.astype(object).reshape(len(texts), self.depth)
        ids, _ = self.channel.search(texts, k=self.depth)
        ids = np.asarray(ids, dtype=object)
        if cached is not None:
            write_parquet(pa.table({"item_id": pa.array(ids.ravel().tolist(), pa.string())}), cached)
        return ids

    def _cache_path(self, texts: list[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(("\n".join(texts) + f"\n{self.depth}").encode()).hexdigest()[:16]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir / f"top{self.depth}-{key}.parquet"
