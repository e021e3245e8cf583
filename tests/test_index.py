"""Index build (flat and HNSW), index directories, and the blend's arithmetic, on a synthetic lake.

The encoder is the real packaged MiniLM; FAISS is real. Fitting the blend needs applied features
and is tested with the service (test_serving.py).
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.index.blend import Blend, fit_transform, raw_inputs
from pipelines.index.build import IndexConfig, build_index, make_index, recall_at_k
from pipelines.index.store import (
    IndexManifest,
    IndexMismatch,
    IndexNotFound,
    find_index,
    load_encoder,
    load_index,
    search,
)
from pipelines.ingest.synthetic import generate_synthetic
from pipelines.modeling.encoder import Encoder
from pipelines.modeling.registry import UnknownModel, register
from pipelines.retrieval.dense import item_embeddings
from pipelines.workspace import ConfigError, Workspace

from conftest import AS_OF


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(root=tmp_path_factory.mktemp("index") / "ws")
    generate_synthetic(ws.lake, n_items=400, n_queries=80, seed=3, as_of=AS_OF)
    return ws


@pytest.fixture(scope="module")
def flat(ws) -> IndexManifest:
    return build_index(ws, IndexConfig(), progress=False)


def test_flat_index_is_exact_and_maps_rows_to_catalog(ws, flat):
    loaded = load_index(ws.indexes_dir / flat.index_version)
    items = ws.lake.read("items")
    assert loaded.item_ids.tolist() == items["item_id"].tolist()
    assert loaded.titles.tolist() == items["title"].tolist()
    assert (flat.model_version, flat.feature_service, flat.kind, flat.items) == (
        "minilm-l6-v2", "retriever_online", "flat", len(items))
    assert flat.index_version == f"minilm-l6-v2-{flat.catalog_hash}"
    encoder = load_encoder(flat, ws.models_dir)
    vectors = item_embeddings(encoder, items["item_id"].tolist(), items["title"].tolist(),
                              cache_dir=ws.cache_dir / "retrieval")
    query = encoder.encode(["galvanized angle"])
    scores, rows = loaded.index.search(query, 10)
    brute = vectors @ query[0]
    assert rows[0].tolist() == np.argsort(-brute, kind="stable")[:10].tolist()
    assert np.allclose(scores[0], np.sort(brute)[::-1][:10], atol=1e-5)


def test_embeddings_come_from_the_shared_cache(ws, flat):
    cached = list((ws.cache_dir / "retrieval").glob("items-*.npy"))
    assert len(cached) == 1 and flat.model_fingerprint in cached[0].name
    before = cached[0].stat().st_mtime_ns
    again = build_index(ws, IndexConfig(), progress=False)
    assert again.index_version == flat.index_version
    assert cached[0].stat().st_mtime_ns == before  # reused, not re-encoded and rewritten


def test_hnsw_index_reports_recall_against_exact(ws, flat):
    hnsw = build_index(ws, IndexConfig(kind="hnsw", hnsw_m=8, ef_search=16), progress=False)
    assert hnsw.index_version == f"{flat.index_version}-hnsw"
    assert hnsw.params == {"m": 8, "ef_construction": 200, "ef_search": 16}
    assert hnsw.recall_queries == 80 and 0.5 < hnsw.recall_at_100 <= 1.0
    loaded = load_index(ws.indexes_dir / hnsw.index_version)
    assert loaded.index.hnsw.efSearch == 16  # the stored beam is what serving searches with
    assert find_index(ws.indexes_dir, "minilm-l6-v2") == ws.indexes_dir / hnsw.index_version  # newest


def test_hnsw_search_widens_its_beam_to_k():
    """FAISS alone returns -1 slots when k > efSearch; store.search must return k real items."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    index = make_index(vectors, IndexConfig(kind="hnsw", hnsw_m=8, ef_search=8))
    assert (index.search(vectors[:5], 300)[1] < 0).any()  # the FAISS behaviour guarded against
    _, rows = search(index, vectors[:5], 300)
    assert (rows >= 0).all() and all(len(set(r)) == 300 for r in rows)
    assert recall_at_k(index, make_index(vectors, IndexConfig()), vectors[:20], k=300) > 0.9


def test_recall_at_k_detects_a_poor_approximate_index():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
    exact = make_index(vectors, IndexConfig())
    poor = faiss.IndexHNSWFlat(32, 2, faiss.METRIC_INNER_PRODUCT)
    poor.hnsw.efSearch = 1
    poor.add(vectors)
    assert recall_at_k(exact, exact, queries) == 1.0
    assert recall_at_k(poor, exact, queries, k=10) < 0.9


def test_an_index_refuses_an_encoder_with_other_weights(ws, flat, tmp_path):
    other = Encoder.load()
    next(other.model.parameters()).data.mul_(1.01)
    path = register(tmp_path / "models", other, {"note": "perturbed"}, name="perturbed").path
    with pytest.raises(IndexMismatch, match="not the one index"):
        load_encoder(flat, ws.models_dir, model_dir=path)


def test_bad_settings_fail_with_a_message(ws, tmp_path):
    with pytest.raises(ConfigError, match="index kind 'ivf'"):
        IndexConfig(kind="ivf")
    with pytest.raises(UnknownModel, match="no-such-model"):
        build_index(ws, IndexConfig(model="no-such-model"), progress=False)
    with pytest.raises(IndexNotFound, match="unisup index build"):
        find_index(tmp_path / "empty")
    result = CliRunner().invoke(app, ["--workspace", str(ws.root), "index", "build", "--kind", "ivf"])
    assert result.exit_code == 2 and "index kind 'ivf'" in result.output


def test_without_applied_features_blend_and_serve_say_what_to_run(ws, flat):
    runner = CliRunner()
    built = runner.invoke(app, ["--workspace", str(ws.root), "index", "build"])
    assert built.exit_code == 2 and "unisup apply" in built.output  # the index itself was built
    assert runner.invoke(app, ["--workspace", str(ws.root), "index", "build", "--no-blend"]).exit_code == 0
    served = runner.invoke(app, ["--workspace", str(ws.root), "serve"])
    assert served.exit_code == 2 and "unisup apply" in served.output


def _blend(weights=(2.0, 1.0, -0.5)) -> Blend:
    inputs = ("model_score", "expected_grade", "clicks_30d")
    raw = np.array([[0.1, 0.0, 0.0], [0.5, 3.0, 400.0], [0.9, 1.5, np.nan]])
    log1p, mean, scale = fit_transform(inputs, raw)
    return Blend(inputs, tuple(log1p), tuple(mean), tuple(scale), weights, -0.3)


def test_blend_transforms_counts_and_imputes_missing_as_mean():
    blend = _blend()
    assert blend.log1p == (False, False, True)  # counts above 10 are logged, grades are not
    assert blend.mean[2] == pytest.approx(np.log1p([0.0, 400.0]).mean())
    scores = np.array([0.3, 0.3])
    with_mean = blend.scores(scores, {"expected_grade": [blend.mean[1], None],
                                      "clicks_30d": [np.expm1(blend.mean[2]), float("nan")]})
    assert with_mean[0] == pytest.approx(with_mean[1])  # a missing value scores as its mean


def test_blend_round_trips_through_json(tmp_path):
    blend = _blend()
    blend.save(tmp_path)
    assert "formula" in json.loads((tmp_path / "blend.json").read_text())
    assert Blend.load(tmp_path) == blend
    assert Blend.load(tmp_path / "nothing-here") is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=50),
       st.floats(0.01, 5), st.floats(-5, 5), st.floats(-5, 5))
def test_without_features_the_blend_keeps_the_model_order(model_scores, w0, w1, w2):
    """Items with no features (cold query, store down, with_features=false) rank by model score."""
    blend = _blend((w0, w1, w2))
    s = np.array(model_scores)
    final = blend.scores(s, None)
    assert np.all(np.diff(final[np.argsort(s, kind="stable")]) >= 0)
    assert np.array_equal(final, blend.scores(s, {}))


def test_raw_inputs_read_none_and_missing_columns_as_nan():
    raw = raw_inputs(("model_score", "a", "b"), np.array([0.5, 0.6]), {"a": [1, None]})
    assert raw[:, 0].tolist() == [0.5, 0.6] and raw[0, 1] == 1.0
    assert np.isnan(raw[1, 1]) and np.isnan(raw[:, 2]).all()
