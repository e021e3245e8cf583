"""The retrieval_prior signal: how strongly three retrieval channels agree on a (query, item) pair.

For every training query (dev queries are never retrieved for, so nothing downstream can fit on
them through this table), each channel (BM25, MiniLM + FAISS, character n-grams; see
pipelines.retrieval) returns its top 100 from the whole catalog. Each pair in the union of those
lists gets its rank in every channel (101 where absent), the reciprocal-rank fusion score and the
number of channels that hold it. No judgments are read.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureView, Field
from feast.types import Float32, Int64
from rich.console import Console

from pipelines.atomic import atomic_path
from pipelines.retrieval import build_channels, catalog_hash, search_all
from pipelines.retrieval.fusion import prior_table
from pipelines.signals.entities import PAIR
from pipelines.signals.spec import Signal, SignalContext, bounds, signal_source, table_columns
from pipelines.signals.training import training_queries

DEPTH = 100  # per channel and query


# Agreement of retrieval channels: per-channel rank (101 = not retrieved), fused score, count.
retrieval_prior_fv = FeatureView(
    name="retrieval_prior",
    entities=PAIR,
    ttl=timedelta(days=365),
    schema=[
        Field(name="rank_bm25", dtype=Int64, description="Rank in BM25's top 100; 101 = not retrieved",
              tags=bounds(1, 101)),
        Field(name="rank_dense", dtype=Int64,
              description="Rank in the dense (MiniLM + FAISS) top 100; 101 = not retrieved",
              tags=bounds(1, 101)),
        Field(name="rank_char", dtype=Int64, description="Rank in the character n-gram top 100; 101 = not retrieved",
              tags=bounds(1, 101)),
        Field(name="fusion_score", dtype=Float32, description="Reciprocal-rank fusion of the three ranks",
              tags=bounds(0)),
        Field(name="agreement", dtype=Int64, description="Channels (of 3) that retrieved the item", tags=bounds(0, 3)),
    ],
    source=signal_source("retrieval_prior"),
    description=("How strongly three retrieval channels (BM25, dense, character n-grams) agree on a (query, item)"
                 " pair: each channel's rank, their fusion and count; stamped at the run's as-of time."),
    tags={"signal": "prior", "grain": "pair"},
)
COLUMNS = table_columns(retrieval_prior_fv, PAIR)  # the table, in the order producers write it


def retrieval_cache(ctx: SignalContext) -> Path | None:
    """Where producers cache catalog embeddings and candidate tables (None: no work_dir, no cache)."""
    return Path(ctx.work_dir) / "retrieval" if ctx.work_dir is not None else None


def candidate_table(ctx: SignalContext, channels: dict, queries: pd.DataFrame, items: pd.DataFrame,
                    console: Console | None = None) -> pd.DataFrame:
    """Every channel's top DEPTH for the queries, fused (prior_table), cached in ctx.work_dir.

    The prior and the teacher both need this table; the cache key (catalog, queries, depth) lets
    one `signals build` search once, and a re-run not at all."""
    key = hashlib.sha256((catalog_hash(items) + "|" + ",".join(queries["query_id"]) + f"|{DEPTH}").encode())
    cache = retrieval_cache(ctx)
    path = cache / f"prior-{key.hexdigest()[:16]}.parquet" if cache is not None else None
    if path is not None and path.exists():
        return pd.read_parquet(path)
    hits, seconds = search_all(channels, queries["query_norm"].tolist(), k=DEPTH)
    if console is not None:
        console.print("  search seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in seconds.items()))
    table = prior_table(hits, queries["query_id"].tolist())
    if path is not None:
        with atomic_path(path) as tmp:
            table.to_parquet(tmp)
    return table


def retrieval_prior(ctx: SignalContext) -> pd.DataFrame:
    """One row per (training query, item) retrieved by any channel, stamped ctx.as_of."""
    console = Console(stderr=True)
    queries = training_queries(ctx)
    items = ctx.lake.read("items")
    console.print(f"retrieval prior: {len(queries):,} training queries x {len(items):,} items")
    channels = build_channels(items, cache_dir=retrieval_cache(ctx), ray=ctx.ray)
    table = candidate_table(ctx, channels, queries, items, console)
    as_of = pd.Timestamp(ctx.as_of)
    as_of = (as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")).as_unit("us")
    table["event_timestamp"] = as_of
    table["created_timestamp"] = as_of
    for col in ("rank_bm25", "rank_dense", "rank_char", "agreement"):
        table[col] = table[col].astype(np.int64)
    table["fusion_score"] = table["fusion_score"].astype(np.float32)
    return table[COLUMNS]


SIGNAL = Signal(retrieval_prior_fv, producer=retrieval_prior, online_features=("fusion_score", "agreement"),
                ranker_features=("rank_bm25", "rank_dense", "rank_char", "fusion_score", "agreement"))
