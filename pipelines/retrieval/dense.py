"""Dense channel: MiniLM embeddings of titles in an exact inner-product FAISS index.

Embeddings are unit length, so inner product is cosine and IndexFlatIP gives the exact top-k (no
recall lost to an approximate index; 54k x 384 floats is 84 MB and a brute-force scan is cheap).
Encoding the catalog is the expensive step on CPU, so item embeddings are cached on disk under a key
made of the encoder's fingerprint and the catalog hash: a new model or a changed catalog re-encodes,
anything else reuses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from pipelines.atomic import atomic_path
from pipelines.modeling.encoder import Encoder
from pipelines.modeling.ray_encoder import RayEncoder
from pipelines.modeling.runtime import RuntimeEncoder
from pipelines.retrieval import Hits, catalog_hash, to_hits

_RECENT: dict[str, np.ndarray] = {}  # the last catalog encoded in this process, by cache key
RECENT_QUERIES = 256  # query vectors a channel remembers (DenseChannel.recent_vector): a request's, not a batch's


def item_embeddings(encoder: Encoder | RuntimeEncoder, item_ids: Sequence[str], titles: Sequence[str],
                    cache_dir: Path | None = None) -> np.ndarray:
    """Title embeddings (n_items, dim) float32, reused from this process or cache_dir when the key
    (model fingerprint + catalog hash) matches, else encoded and written to cache_dir when given.

    A RuntimeEncoder (ONNX Runtime / OpenVINO) has its torch weights' fingerprint, so it fills and
    reads the same entries as torch: its vectors pass the gate of pipelines/modeling/runtime.py."""
    catalog = pd.DataFrame({"item_id": list(item_ids), "title": list(titles)})
    key = f"items-{encoder.fingerprint()}-{catalog_hash(catalog)}"
    path = Path(cache_dir) / f"{key}.npy" if cache_dir is not None else None
    if key in _RECENT:
        vectors = _RECENT[key]
    elif path is not None and path.exists():
        vectors = np.load(path)
    else:
        vectors = encoder.encode(titles)
    if path is not None and not path.exists():
        with atomic_path(path) as tmp, tmp.open("wb") as out:
            np.save(out, vectors)
    _RECENT.clear()
    _RECENT[key] = vectors
    return vectors


class DenseChannel:
    """Query embedding vs title embeddings, exact inner product (cosine) via faiss.IndexFlatIP."""

    name = "dense"

    def __init__(self, encoder: Encoder, index: faiss.Index, item_ids: np.ndarray):
        self.encoder = encoder
        self.index = index
        self.item_ids = np.asarray(item_ids, dtype=object)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # query text -> vector, newest last
        self._lock = threading.Lock()  # a service's request threads share one channel

    @classmethod
    def build(cls, item_ids: Sequence[str], titles: Sequence[str], encoder: Encoder | None = None,
              cache_dir: Path | None = None) -> DenseChannel:
        encoder = encoder or Encoder.load()
        vectors = item_embeddings(encoder, item_ids, titles, cache_dir)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(encoder, index, np.asarray(item_ids, dtype=object))

    def search(self, queries: Sequence[str], k: int = 100) -> Hits:
        """Top-k items per query by cosine; every item has a score, so every slot is filled."""
        queries = list(queries)
        return self._search(queries, self.encoder.encode(queries), k)

    def search_chunks(self, queries: Sequence[str], k: int, chunk: int) -> Iterator[Hits]:
        """search() of each run of `chunk` queries in turn (search_all's progress steps). An encoder on
        Ray Data encodes every chunk in one pass first (the vectors the searches would encode,
        RayEncoder.encode_chunks): one actor pool for the run, not one per chunk."""
        queries = list(queries)
        vectors = self.encoder.encode_chunks(queries, chunk) if isinstance(self.encoder, RayEncoder) else None
        for start in range(0, len(queries), chunk):
            part = queries[start:start + chunk]
            encoded = self.encoder.encode(part) if vectors is None else vectors[start:start + len(part)]
            yield self._search(part, encoded, k)

    def _search(self, queries: list[str], vectors: np.ndarray, k: int) -> Hits:
        with self._lock:
            for query, vector in zip(queries, vectors):
                self._recent[query] = vector
                self._recent.move_to_end(query)
            while len(self._recent) > RECENT_QUERIES:
                self._recent.popitem(last=False)
        scores, rows = self.index.search(vectors, min(k, self.index.ntotal))
        return to_hits(rows, scores, self.item_ids, k)

    def recent_vector(self, query: str) -> np.ndarray | None:
        """The vector a recent search encoded for `query`, if still remembered: the ranking stage's
        pair features need the query vector its candidates were just retrieved with (/search would
        otherwise encode every query twice)."""
        with self._lock:
            return self._recent.get(query)
