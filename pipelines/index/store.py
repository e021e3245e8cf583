"""Index directories: workspace/indexes/<model version>-<catalog hash>[-<kind>]/.

Each holds index.faiss (FAISS ids are row numbers), items.parquet (row -> item_id, title, in FAISS
id order) and manifest.json (model version and fingerprint, feature service, catalog hash, kind and
parameters, recall against exact search). A directory is written under a temporary name and renamed
into place, so a reader never sees half an index. blend.json (blend.py) may sit beside them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast.errors import FeatureServiceNotFoundException

from pipelines.atomic import atomic_path
from pipelines.features.repo import feature_store
from pipelines.modeling.encoder import Encoder
from pipelines.modeling.registry import resolve
from pipelines.modeling.runtime import EXPORT_CACHE, RuntimeEncoder, with_runtime
from pipelines.settings import Settings
from pipelines.workspace import ConfigError, Workspace

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"
FEATURE_SERVICE = "retriever_online"  # what the service reads per returned pair


class IndexNotFound(FileNotFoundError):
    """No index directory where one was expected; the message says how to build one."""


class IndexMismatch(ValueError):
    """An encoder whose weights differ from the ones the index vectors were made with."""


@dataclass(frozen=True)
class IndexManifest:
    """What an index was built from and how; written as manifest.json."""

    index_version: str  # the directory name
    model_version: str
    model_fingerprint: str  # Encoder.fingerprint(): serving refuses an encoder that differs
    feature_service: str
    catalog_hash: str
    items: int
    dim: int
    kind: str  # "flat" (exact inner product) | "hnsw"
    params: dict = field(default_factory=dict)  # hnsw: m, ef_construction, ef_search
    recall_at_100: float | None = None  # vs exact search over sample queries; 1.0 for flat
    recall_queries: int = 0
    build_seconds: float = 0.0
    created: str = ""
    faiss_version: str = faiss.__version__

    @classmethod
    def read(cls, directory: Path) -> IndexManifest:
        path = Path(directory) / MANIFEST_FILE
        if not path.exists():
            raise IndexNotFound(f"{directory}: no {MANIFEST_FILE}; build one with `unisup index build`")
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class LoadedIndex:
    """An index ready to search: FAISS row -> item id and title."""

    path: Path
    manifest: IndexManifest
    index: faiss.Index
    item_ids: np.ndarray  # object array, FAISS id order
    titles: np.ndarray


def search(index: faiss.Index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top k per query vector. An HNSW index searches with a beam of at least
    k: FAISS does not widen efSearch to k by itself, it returns -1 slots and loses recall instead."""
    params = None
    if isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=max(index.hnsw.efSearch, k))
    return index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)


def index_name(model_version: str, catalog_hash: str, kind: str) -> str:
    """The directory name; the default exact kind carries no suffix."""
    return f"{model_version}-{catalog_hash}" + ("" if kind == "flat" else f"-{kind}")


def write_index(directory: Path, index: faiss.Index, item_ids: list[str], titles: list[str],
                manifest: IndexManifest) -> Path:
    """Write the three files into `directory`, replacing any previous build atomically."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"item_id": pa.array(item_ids, pa.string()),
                                 "title": pa.array(titles, pa.string())}), tmp / ITEMS_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
    return directory


def load_index(directory: Path) -> LoadedIndex:
    """Read an index directory written by write_index."""
    directory = Path(directory)
    manifest = IndexManifest.read(directory)
    index = faiss.read_index(str(directory / INDEX_FILE))
    items = pq.read_table(directory / ITEMS_FILE)
    if index.ntotal != items.num_rows or index.ntotal != manifest.items:
        raise ValueError(f"{directory}: index holds {index.ntotal} vectors, items.parquet "
                         f"{items.num_rows} rows, manifest {manifest.items}")
    return LoadedIndex(directory, manifest, index,
                       items["item_id"].to_numpy(zero_copy_only=False).astype(object),
                       items["title"].to_numpy(zero_copy_only=False).astype(object))


def load_encoder(manifest: IndexManifest, models_dir: Path, model_dir: Path | None = None,
                 threads: int | None = None, runtime: str | None = None) -> Encoder | RuntimeEncoder:
    """The encoder an index was built with (its model version, or `model_dir`), checked by
    fingerprint: query vectors from any other weights would not be comparable to the index's.

    `runtime` (default: the encoder_runtime setting) says what runs it: torch, or ONNX Runtime /
    OpenVINO on an export of these weights cached in the workspace (WORKSPACE/cache/encoders, the
    workspace whose models_dir this is), whose vectors are checked against torch's on load."""
    path = Path(model_dir) if model_dir is not None else resolve(models_dir, manifest.model_version).path
    encoder = Encoder.load(path, threads=threads)
    fingerprint = encoder.fingerprint()
    if fingerprint != manifest.model_fingerprint:
        raise IndexMismatch(f"model at {path} (fingerprint {fingerprint}) is not the one index "
                            f"{manifest.index_version} was built with ({manifest.model_fingerprint})")
    runtime = runtime or Settings.load().encoder_runtime
    cache_dir = Workspace(root=Path(models_dir).parent).cache_dir / EXPORT_CACHE
    return with_runtime(encoder, runtime, cache_dir, threads=threads, fingerprint=fingerprint)


def index_dirs(indexes_dir: Path) -> list[Path]:
    """Every built index directory (hidden names are writes under way: pipelines.atomic)."""
    root = Path(indexes_dir)
    return sorted(p.parent for p in root.glob(f"[!.]*/{MANIFEST_FILE}")) if root.exists() else []


def find_index(indexes_dir: Path, model_version: str | None = None) -> Path:
    """The newest index directory (optionally of one model version)."""
    root = Path(indexes_dir)
    found = index_dirs(root)
    if model_version is not None:
        found = [p for p in found if IndexManifest.read(p).model_version == model_version]
    if not found:
        which = f" for model {model_version!r}" if model_version else ""
        raise IndexNotFound(f"no index{which} under {root}; build one with `unisup index build`")
    return max(found, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)


def check_servable(ws: Workspace, index_dir: Path | None = None) -> IndexManifest:
    """What the service needs before loading anything heavy: an index (the given one, else the
    newest in the workspace) and, in the workspace's registry, the feature service it reads.
    Raises IndexNotFound / ConfigError with one line."""
    manifest = IndexManifest.read(index_dir or find_index(ws.indexes_dir))
    try:
        feature_store(ws).get_feature_service(manifest.feature_service)
    except FeatureServiceNotFoundException as exc:
        raise ConfigError(f"{exc}: run `unisup apply` on {ws.root}") from None
    return manifest
