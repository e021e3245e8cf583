"""Retrieval channels over the whole catalog: BM25, dense (MiniLM + FAISS) and character n-grams.

Every channel answers `search(queries, k) -> (ids, scores)`: two (n_queries, k) arrays, item ids
(object, MISSING where the channel holds fewer than k items for that query) and float32 scores
(-inf there), best first. Channels score on incomparable scales, so fusion (fusion.py) reads ranks.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from pipelines.modeling.encoder import Encoder
    from pipelines.ray_data import RayDataConfig

Hits = tuple[np.ndarray, np.ndarray]  # ids (n, k) object; scores (n, k) float32
MISSING = ""  # id of an empty slot
CHANNELS = ("bm25", "dense", "char")  # names; the prior's columns are rank_<name>


class Channel(Protocol):
    """What prior, report and serving need from a channel: a name and a batched top-k search."""

    name: str

    def search(self, queries: Sequence[str], k: int = 100) -> Hits: ...


def to_hits(rows: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, k: int) -> Hits:
    """Catalog rows (-1 = no hit) and scores to the (ids, scores) contract, padded to k columns."""
    rows = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    scores = np.asarray(scores, dtype=np.float32).reshape(rows.shape)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)))
    ids = np.where(rows >= 0, item_ids[np.maximum(rows, 0)], MISSING).astype(object)
    return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def catalog_hash(items: pd.DataFrame) -> str:
    """Hash of (item_id, title) in catalog order: any change to the catalog invalidates caches."""
    h = hashlib.sha256()
    for chunk in range(0, len(items), 10_000):
        part = items.iloc[chunk:chunk + 10_000]
        h.update("\n".join(part["item_id"].astype(str) + "\t" + part["title"].astype(str)).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=2)
def shared_encoder(path: Path | None = None) -> Encoder:
    """The encoder retrieval uses, loaded once per process and path (it is only ever read here)."""
    from pipelines.modeling.encoder import Encoder

    return Encoder.load(path)


def build_channels(items: pd.DataFrame, cache_dir: Path | None = None, encoder_path: Path | None = None,
                   ray: RayDataConfig | None = None) -> dict[str, Channel]:
    """The three channels over one catalog, in CHANNELS order (dense embeddings cached in cache_dir).

    With `ray` (a producer on the Ray engine), the dense channel's encoder is a RayEncoder: the catalog,
    batch searches and the pair features' query vectors are encoded on a Ray Data actor pool, with
    the same vectors and cache keys."""
    from pipelines.modeling.ray_encoder import RayEncoder
    from pipelines.retrieval.bm25 import BM25Channel
    from pipelines.retrieval.chars import CharChannel
    from pipelines.retrieval.dense import DenseChannel

    ids, titles = items["item_id"].astype(str).to_numpy(), items["title"].astype(str).tolist()
    encoder = shared_encoder(encoder_path) if ray is None else RayEncoder.of(shared_encoder(encoder_path), ray)
    return {
        "bm25": BM25Channel.build(ids, titles),
        "dense": DenseChannel.build(ids, titles, encoder, cache_dir=cache_dir),
        "char": CharChannel.build(ids, titles),
    }


def search_all(channels: dict[str, Channel], queries: Sequence[str], k: int = 100,
               chunk: int = 1024, progress: bool = True) -> tuple[dict[str, Hits], dict[str, float]]:
    """Every channel's top-k for every query, with one progress bar per channel (none for a request).

    Returns hits and seconds per channel (the channel search cost the reports quote)."""
    queries = list(queries)
    hits, seconds = {}, {}
    columns = (TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        for name, channel in channels.items():
            task = bar.add_task(f"{name} top-{k}", total=len(queries))
            start, parts = time.perf_counter(), []
            for part in _chunked(channel, queries, k, chunk):
                parts.append(part)
                bar.advance(task, len(part[0]))
            seconds[name] = time.perf_counter() - start
            if parts:
                hits[name] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            else:
                hits[name] = (np.empty((0, k), dtype=object), np.empty((0, k), dtype=np.float32))
    return hits, seconds


def _chunked(channel: Channel, queries: list[str], k: int, chunk: int) -> Iterator[Hits]:
    """The channel's top-k of each run of `chunk` queries, by its own search_chunks where it has one
    (the dense channel: one encoding pass on Ray Data for the whole run)."""
    if hasattr(channel, "search_chunks"):
        return channel.search_chunks(queries, k, chunk)
    return (channel.search(queries[i:i + chunk], k=k) for i in range(0, len(queries), chunk))
