"""The encoder runtimes (pipelines/modeling/runtime.py) on the real packaged MiniLM: their vectors
match torch float32, row for row, the ONNX export is cached by fingerprint and reused, a damaged
cache file is rebuilt, and serving's load_encoder hands out the runtime the setting names."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipelines.index.store import IndexManifest, load_encoder
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.lake import Lake
from pipelines.modeling.encoder import Encoder
from pipelines.modeling.registry import BASE_VERSION
from pipelines.modeling.runtime import (
    PROBE,
    RuntimeEncoder,
    RuntimeExportError,
    export_path,
    with_runtime,
)
from pipelines.settings import Settings
from pipelines.workspace import ConfigError

COSINE = 0.999  # the gate: runtime vectors vs torch float32


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(bf16=False)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> object:
    """One export cache for the session (tests/test_benchmarks.py's quick run reuses it too)."""
    return tmp_path_factory.getbasetemp() / "encoder-exports"


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
    """A few hundred synthetic titles and queries, plus edge cases (empty, one letter, over max_length)."""
    lake = Lake(tmp_path_factory.mktemp("lake"))
    generate_synthetic(lake, n_items=250, n_queries=150, seed=3)
    titles = lake.read("items")["title"].astype(str).tolist()
    queries = lake.read("queries")["query_text"].astype(str).tolist()
    return [*titles, *queries, "", "x", " ".join(titles[:10])]


@pytest.fixture(scope="module")
def reference(encoder, texts) -> np.ndarray:
    return encoder.encode(texts)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_runtime_vectors_match_torch_float32(encoder, exports, texts, reference, runtime):
    fast = with_runtime(encoder, runtime, exports, threads=1)
    assert isinstance(fast, RuntimeEncoder) and fast.fingerprint() == encoder.fingerprint()
    vectors = fast.encode(texts, batch_size=64)  # several token-length buckets
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(1)
    assert cosine.min() >= COSINE, f"{runtime}: min cosine {cosine.min():.5f}"
    order = np.random.default_rng(0).permutation(len(texts))  # input order is kept, whatever the buckets
    assert np.allclose(fast.encode([texts[i] for i in order], batch_size=7), vectors[order], atol=1e-5)
    assert np.allclose(fast.encode(texts[:1]), vectors[:1], atol=1e-5)
    assert fast.encode([]).shape == (0, encoder.dim)


def test_export_cache_is_reused_and_a_bad_file_rebuilt(encoder, exports, tmp_path):
    first = with_runtime(encoder, "onnx", exports, threads=1)
    first.encode(PROBE)
    path = export_path(exports, encoder.fingerprint())
    stamp = path.stat().st_mtime_ns
    second = with_runtime(encoder, "onnx", exports, threads=1)
    second.encode(PROBE)
    assert second.exported is False and path.stat().st_mtime_ns == stamp  # read back, not exported again

    damaged = export_path(tmp_path, encoder.fingerprint())
    damaged.write_bytes(path.read_bytes()[: 1 << 20])  # a write cut short
    rebuilt = with_runtime(encoder, "onnx", tmp_path, threads=1)
    assert (rebuilt.encode(PROBE) * encoder.encode(PROBE)).sum(1).min() >= COSINE
    assert rebuilt.exported is True and damaged.stat().st_size == path.stat().st_size


def test_bad_runtime_and_bad_model_errors_name_the_problem(encoder, tmp_path):
    with pytest.raises(ValueError, match="encoder runtime 'tensorrt'"):
        with_runtime(encoder, "tensorrt")
    with pytest.raises(ConfigError, match="encoder_runtime"):
        Settings.load(encoder_runtime="tensorrt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    runtime = RuntimeEncoder(encoder, "onnx", tmp_path)
    with pytest.raises(RuntimeExportError, match="onnx cannot run .*garbage.onnx"):
        runtime._checked(garbage, encoder.encode(PROBE))


def test_load_encoder_gives_the_configured_runtime_from_the_workspace_cache(encoder, exports, tmp_path,
                                                                            monkeypatch):
    manifest = IndexManifest(index_version="test", model_version=BASE_VERSION,
                             model_fingerprint=encoder.fingerprint(), feature_service="retriever_online",
                             catalog_hash="0", items=0, dim=encoder.dim, kind="flat")
    cached = tmp_path / "cache" / "encoders" / export_path(exports, encoder.fingerprint()).name
    cached.parent.mkdir(parents=True)
    shutil.copy(export_path(exports, encoder.fingerprint()), cached)
    served = load_encoder(manifest, tmp_path / "models", threads=1, runtime="onnx")
    assert isinstance(served, RuntimeEncoder) and served.threads == 1
    assert (served.encode(PROBE) * encoder.encode(PROBE)).sum(1).min() >= COSINE
    assert served.exported is False  # the workspace's cached export
    assert isinstance(load_encoder(manifest, tmp_path / "models", threads=1, runtime="torch"), Encoder)
    monkeypatch.setenv("UNISUP_ENCODER_RUNTIME", "torch")  # no argument: the setting decides
    assert isinstance(load_encoder(manifest, tmp_path / "models", threads=1), Encoder)
    monkeypatch.delenv("UNISUP_ENCODER_RUNTIME")
    assert Settings.load().encoder_runtime == "onnx"  # the default: it passed the gate and is faster
    assert isinstance(load_encoder(manifest, tmp_path / "models", threads=1), RuntimeEncoder)
