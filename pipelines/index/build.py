"""`unisup index build`: encode the catalog with a model version and write a FAISS index.

Item embeddings come from pipelines.retrieval.dense.item_embeddings, cached under
workspace/cache/retrieval by (encoder fingerprint, catalog hash) — the same cache the retrieval
channels of the signal producers fill, so the catalog is encoded once per model. Embeddings are
unit length, so inner product is cosine.

Kinds: "flat" (default) is exact inner product (IndexFlatIP): a scan of 54k x 384 floats costs
~2 ms, so exact search is affordable at this catalog size and loses no recall. "hnsw"
(IndexHNSWFlat) trades recall for speed on larger catalogs; its recall@100 against exact search
over the lake's queries is measured at build time and written to the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd
from rich.progress import Progress

from pipelines.index.store import FEATURE_SERVICE, IndexManifest, index_name, search, write_index
from pipelines.modeling.registry import resolve
from pipelines.modeling.runtime import EXPORT_CACHE, with_runtime
from pipelines.retrieval import catalog_hash
from pipelines.retrieval.dense import item_embeddings
from pipelines.settings import Settings
from pipelines.workspace import ConfigError, Workspace

KINDS = ("flat", "hnsw")
RECALL_K = 100


@dataclass(frozen=True)
class IndexConfig:
    """How to build an index; every field has a CLI flag of the same name."""

    model: str | None = field(default=None, metadata={"help": "Model version [newest trained, else minilm-l6-v2]"})
    kind: str = field(default="flat", metadata={"help": "flat (exact inner product) | hnsw (approximate; "
                                                        "recall@100 against exact search reported)"})
    hnsw_m: int = field(default=32, metadata={"help": "HNSW graph degree"})
    ef_construction: int = field(default=200, metadata={"help": "HNSW build-time beam"})
    ef_search: int = field(default=256, metadata={"help": "HNSW query-time beam, stored with the index "
                                                          "(store.search widens it to k)"})
    recall_queries: int = field(default=1000, metadata={"help": "Lake queries that measure an approximate "
                                                                "index's recall@100"})
    seed: int = field(default=0, metadata={"help": "Seed of the recall sample"})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind {self.kind!r}: expected one of {', '.join(KINDS)}")


def make_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An index over unit vectors for inner-product search, of the configured kind."""
    dim = vectors.shape[1]
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        index.hnsw.efSearch = config.ef_search
    index.add(vectors)
    return index


def recall_at_k(index: faiss.Index, exact: faiss.Index, queries: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of the exact top-k that `index` also returns in its top-k."""
    k = min(k, exact.ntotal)
    _, truth = search(exact, queries, k)
    _, got = search(index, queries, k)
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))


def build_index(ws: Workspace, config: IndexConfig, progress: bool = True,
                runtime: str | None = None) -> IndexManifest:
    """Encode the lake's catalog with `config.model`, build the index and write it under
    ws.indexes_dir; returns the manifest (its index_version names the directory).

    `runtime` (default: the encoder_runtime setting) runs the encoder: torch, or an export of the
    same weights (pipelines.modeling.runtime); the embedding cache key is the weights' either way."""
    t0 = time.perf_counter()
    ref = resolve(ws.models_dir, config.model)
    items = ws.lake.read("items")[["item_id", "title"]].astype(str).reset_index(drop=True)
    if items.empty:
        raise ValueError(f"{ws.lake.path('items')} holds no items")
    with Progress(transient=True, disable=not progress) as bar:
        bar.add_task(f"loading model {ref.version}", total=None)
        torch_encoder = ref.load()
        fingerprint = torch_encoder.fingerprint()
        encoder = with_runtime(torch_encoder, runtime or Settings.load().encoder_runtime,
                               ws.cache_dir / EXPORT_CACHE, fingerprint=fingerprint)
    ids, titles = items["item_id"].tolist(), items["title"].tolist()
    vectors = item_embeddings(encoder, ids, titles, cache_dir=ws.cache_dir / "retrieval")
    with Progress(transient=True, disable=not progress) as bar:
        bar.add_task(f"building {config.kind} index of {len(ids):,} items", total=None)
        index = make_index(vectors, config)
    recall, n_queries = 1.0, 0
    if config.kind != "flat":
        exact = make_index(vectors, IndexConfig(kind="flat"))
        queries = _sample_queries(ws, config.recall_queries, config.seed)
        recall, n_queries = recall_at_k(index, exact, encoder.encode(queries)), len(queries)
    chash = catalog_hash(items)
    params = ({"m": config.hnsw_m, "ef_construction": config.ef_construction, "ef_search": config.ef_search}
              if config.kind == "hnsw" else {})
    manifest = IndexManifest(
        index_version=index_name(ref.version, chash, config.kind), model_version=ref.version,
        model_fingerprint=fingerprint, feature_service=FEATURE_SERVICE, catalog_hash=chash, items=len(ids),
        dim=int(vectors.shape[1]), kind=config.kind, params=params, recall_at_100=round(recall, 4),
        recall_queries=n_queries, build_seconds=round(time.perf_counter() - t0, 2),
        created=pd.Timestamp.now(tz="UTC").isoformat())
    write_index(ws.indexes_dir / manifest.index_version, index, ids, titles, manifest)
    return manifest


def _sample_queries(ws: Workspace, n: int, seed: int) -> list[str]:
    """Normalized texts of up to n lake queries (any split: recall measures the index, not a model)."""
    queries = ws.lake.read("queries")["query_norm"].astype(str)
    return queries.sample(n=min(n, len(queries)), random_state=seed).tolist()
