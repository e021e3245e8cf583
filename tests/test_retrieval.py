"""Retrieval channels, fusion and the retrieval_prior producer on a small built-in catalog.

The catalog is a few hundred Home-Depot-shaped titles, each with a unique model number, plus a few
hand-written items the lexical-vs-character tests aim at. MiniLM is the real packaged model.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines import retrieval
from pipelines.lake import Lake
from pipelines.modeling.encoder import Encoder
from pipelines.retrieval import MISSING, dense, search_all, to_hits
from pipelines.retrieval.bm25 import BM25Channel, tokenize
from pipelines.retrieval.chars import CharChannel, char_text
from pipelines.retrieval.dense import DenseChannel, item_embeddings
from pipelines.retrieval.fusion import ABSENT, RRF_K, fused_run, prior_table, rrf
from pipelines.signals import training
from pipelines.signals.spec import SignalContext
from pipelines.text import normalize_query, query_id, query_split

AS_OF = pd.Timestamp("2026-11-22", tz="UTC")
BRANDS = ["BEHR", "Delta", "DEWALT", "Milwaukee", "SharkBite", "Glacier Bay", "Rust-Oleum", "Lutron"]
TYPES = ["Kitchen Faucet", "Shower Head", "Cordless Drill", "Push-to-Connect Coupling", "Deck Stain",
         "Dimmer Switch", "Tool Box", "Wood Screw", "Spray Paint", "Door Hinge"]
SIZES = ["1/2 in.", "3/4 in.", "1 in.", "2 ft.", "1-gal.", "20-Volt", "600-Watt"]
COLOURS = ["Chrome", "Brushed Nickel", "White", "Black", "Red"]
SPECIAL = {  # items the targeted tests look for
    "900001": "Pergo Outlast+ Waterproof Laminate Flooring",
    "900002": "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
}


def make_catalog(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """n generated titles with unique model numbers (so every title is unique), plus SPECIAL."""
    rng = np.random.default_rng(seed)
    models = set()
    while len(models) < n:
        letters = "".join(rng.choice(list("ABCDEFGHJKMNPRTUVWXY"), size=2))
        models.add(f"{letters}-{rng.integers(100, 1000)}")
    titles = [f"{rng.choice(BRANDS)} {rng.choice(SIZES)} {rng.choice(TYPES)} in {rng.choice(COLOURS)} #{m}"
              for m in sorted(models)]
    items = pd.DataFrame({"item_id": [str(100001 + i) for i in range(n)], "title": titles})
    special = pd.DataFrame({"item_id": list(SPECIAL), "title": list(SPECIAL.values())})
    return pd.concat([items, special], ignore_index=True)


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return make_catalog()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load()


@pytest.fixture(scope="module")
def dense_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dense_cache")


@pytest.fixture(scope="module")
def channels(catalog, encoder, dense_cache):
    ids, titles = catalog["item_id"].to_numpy(), catalog["title"].tolist()
    return {"bm25": BM25Channel.build(ids, titles),
            "dense": DenseChannel.build(ids, titles, encoder, dense_cache),
            "char": CharChannel.build(ids, titles)}


def test_tokenizer_folds_units_keeps_sizes_and_singularizes():
    assert tokenize('1/2" SharkBite Couplings') == ["1/2", "inch", "sharkbite", "coupling"]
    assert tokenize("1/2 in. sharkbite coupling") == tokenize("1/2 inch sharkbite couplings")
    assert tokenize("60inch shower pan") == ["60", "inch", "shower", "pan"]
    assert tokenize("BEHR 1-gal. Deck Stain") == ["behr", "1", "gal", "deck", "stain"]
    assert tokenize("glasses batteries boxes hinges") == ["glass", "battery", "box", "hinge"]
    assert "sc141" in char_text("#SC-141 Tugboat").split() and "12" not in char_text("1/2 in.").split()


def test_bm25_finds_exact_title_first(channels, catalog):
    for _, row in catalog.sample(25, random_state=1).iterrows():
        ids, scores = channels["bm25"].search([row["title"]], k=10)
        assert ids[0, 0] == row["item_id"]
        assert scores[0, 0] > 0 and np.all(np.diff(scores[0][ids[0] != MISSING]) <= 0)


def test_bm25_save_load_round_trip(channels, catalog, tmp_path):
    queries = catalog["title"].head(20).tolist() + ["no such words zzqx"]
    before = channels["bm25"].search(queries, k=15)
    after = BM25Channel.load(channels["bm25"].save(tmp_path / "bm25")).search(queries, k=15)
    assert (before[0] == after[0]).all() and np.allclose(before[1], after[1])
    assert (after[0][-1] == MISSING).all() and np.isneginf(after[1][-1]).all()  # no shared token: no hits


@pytest.mark.parametrize("query,item", [
    ("sc141", "900002"),  # model number glued: one unknown BM25 token
    ("watreproof lamnate", "900001"),  # two typos: no BM25 token matches at all
])
def test_char_channel_finds_what_bm25_misses(channels, query, item):
    bm25_ids, _ = channels["bm25"].search([query], k=100)
    char_ids, char_scores = channels["char"].search([query], k=100)
    assert item not in set(bm25_ids[0])
    assert char_ids[0, 0] == item and char_scores[0, 0] > 0


def test_dense_embeddings_are_unit_float32_and_top_k_is_exact(channels, catalog, encoder, dense_cache):
    titles = catalog["title"].tolist()
    vectors = item_embeddings(encoder, catalog["item_id"].tolist(), titles, dense_cache)  # cached
    assert vectors.dtype == np.float32 and vectors.shape == (len(titles), encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    tolerance = 5e-3 if encoder.bf16 else 1e-5  # in bfloat16 a vector moves by ~1e-3 with its batch-mates
    assert np.allclose(encoder.encode(titles[:8], batch_size=3), vectors[:8], atol=tolerance)  # order kept
    queries = ["cordless drill 20v", "chrome kitchen faucet", "deck stain", "waterproof flooring"]
    ids, scores = channels["dense"].search(queries, k=20)
    brute = encoder.encode(queries) @ vectors.T  # (4, n_items)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :20]
    assert (ids == catalog["item_id"].to_numpy()[expected]).all()
    assert np.allclose(scores, np.take_along_axis(brute, expected, axis=1), atol=1e-5)


def test_dense_item_embeddings_come_from_the_cache_second_time(catalog, encoder, tmp_path, monkeypatch):
    ids, titles = catalog["item_id"].to_numpy(), catalog["title"].tolist()
    first = item_embeddings(encoder, ids[:50], titles[:50], tmp_path)
    assert len(list(tmp_path.glob("items-*.npy"))) == 1
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: pytest.fail("re-encoded a cached catalog"))
    assert (item_embeddings(encoder, ids[:50], titles[:50]) == first).all()  # this process: from memory
    monkeypatch.setattr(dense, "_RECENT", {})
    assert (item_embeddings(encoder, ids[:50], titles[:50], tmp_path) == first).all()  # from disk
    with pytest.raises(pytest.fail.Exception):  # another catalog is encoded afresh
        item_embeddings(encoder, ids[:49], titles[:49], tmp_path)


def test_to_hits_pads_short_lists():
    ids, scores = to_hits(np.array([[1, -1]]), np.array([[0.5, 0.0]]), np.array(["a", "b"], dtype=object), 3)
    assert ids.tolist() == [["b", MISSING, MISSING]]
    assert scores[0, 0] == 0.5 and np.isneginf(scores[0, 1:]).all()


def test_rrf_formula_and_agreement_on_hand_example():
    hits = {
        "bm25": (np.array([["a", "b", MISSING]], dtype=object), np.zeros((1, 3), np.float32)),
        "dense": (np.array([["b", "c", "a"]], dtype=object), np.zeros((1, 3), np.float32)),
        "char": (np.array([["d", MISSING, MISSING]], dtype=object), np.zeros((1, 3), np.float32)),
    }
    table = prior_table(hits, ["q"]).set_index("item_id")
    assert table.loc["a", ["rank_bm25", "rank_dense", "rank_char"]].tolist() == [1, 3, ABSENT]
    assert table.loc["c", ["rank_bm25", "rank_dense", "rank_char"]].tolist() == [ABSENT, 2, ABSENT]
    assert table["agreement"].to_dict() == {"a": 2, "b": 2, "c": 1, "d": 1}
    assert table.loc["a", "fusion_score"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 3), rel=1e-6)
    assert table.loc["b", "fusion_score"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1), rel=1e-6)
    assert list(table.index) == ["b", "a", "d", "c"]  # fusion order: b (1,2) > a (1,3) > d (1) > c (2)
    assert list(fused_run(table.reset_index(), depth=3)["q"]) == ["b", "a", "d"]
    assert rrf(np.array([[ABSENT, ABSENT, 1]]), weights=[1, 1, 2])[0] == pytest.approx(2 / 61)


def write_lake(root, catalog: pd.DataFrame, texts: list[str]) -> Lake:
    """A lake holding the catalog and queries (no judgments are needed by the prior)."""
    lake = Lake(root)
    lake.write("items", catalog.assign(event_timestamp=AS_OF))
    norm = [normalize_query(t) for t in texts]
    lake.write("queries", pd.DataFrame({
        "query_id": [query_id(t) for t in texts], "query_text": texts, "query_norm": norm,
        "split": [query_split(t) for t in texts], "frequency": pd.array([None] * len(texts), "Int64"),
        "event_timestamp": AS_OF}))
    lake.write("judgments", pd.DataFrame(columns=["judgment_id", "query_id", "item_id", "relevance",
                                                  "event_timestamp"]))
    return lake


def test_retrieval_prior_table(catalog, encoder, dense_cache, tmp_path, monkeypatch):
    from pipelines.signals import retrieval_prior as prior

    monkeypatch.setattr(retrieval, "shared_encoder", lambda *a, **k: encoder)  # load MiniLM once
    shutil.copytree(dense_cache, tmp_path / "work" / "retrieval")  # same model and catalog: a cache hit

    texts = [f"{b} {t}" for b in BRANDS for t in TYPES[:4]] + ["sc141", "watreproof lamnate", "zzqx"]
    lake = write_lake(tmp_path / "lake", catalog, texts)
    ctx = SignalContext(lake=lake, as_of=AS_OF, seed=3, work_dir=tmp_path / "work")
    table = prior.retrieval_prior(ctx)
    assert list(table.columns) == prior.COLUMNS
    for col in ("rank_bm25", "rank_dense", "rank_char", "agreement"):
        assert table[col].dtype == np.int64 and table[col].between(1, ABSENT).all()
    assert table["fusion_score"].dtype == np.float32
    assert (table["event_timestamp"] == AS_OF).all() and (table["created_timestamp"] == AS_OF).all()
    train = {query_id(t) for t in texts if query_split(t) == "train"}
    assert set(table["query_id"]) == train  # dense holds 100 items for any query, even "zzqx"
    assert not table.duplicated(["query_id", "item_id"]).any()
    ranks = table[["rank_bm25", "rank_dense", "rank_char"]].to_numpy()
    assert (table["agreement"].to_numpy() == (ranks < ABSENT).sum(1)).all() and (ranks == ABSENT).any()
    assert np.allclose(table["fusion_score"], rrf(ranks), rtol=1e-6)
    assert table.groupby("query_id")["rank_dense"].apply(lambda r: (r < ABSENT).sum()).eq(100).all()

    monkeypatch.setattr(training, "QUICK_QUERIES", 5)
    quick = prior.retrieval_prior(SignalContext(lake=lake, as_of=AS_OF, seed=3, quick=True,
                                                work_dir=tmp_path / "work"))
    assert quick["query_id"].nunique() == 5 and set(quick["query_id"]) <= train
    again = prior.retrieval_prior(SignalContext(lake=lake, as_of=AS_OF, seed=3, quick=True,
                                                work_dir=tmp_path / "work"))
    pd.testing.assert_frame_equal(quick, again)


def test_search_all_times_every_channel(channels, catalog):
    hits, seconds = search_all(channels, catalog["title"].head(7).tolist(), k=5, chunk=3)
    assert set(hits) == set(seconds) == {"bm25", "dense", "char"}
    assert all(h[0].shape == (7, 5) for h in hits.values())


def test_pair_features_reuse_the_vector_the_dense_search_encoded(channels, catalog, encoder, dense_cache):
    """/search retrieves with the dense channel, then scores pairs: with reuse on and the channel in
    float32 (as the scorer always is), the scorer takes the channel's vector for the query instead of
    encoding it again, and every feature equals a scorer's that encoded the query itself. (A bfloat16
    channel's vectors differ by ~1e-3: never reused, so served features equal the training table's.)"""
    from dataclasses import replace

    from pipelines.retrieval.pair_features import PairScorer

    ids, titles = catalog["item_id"].to_numpy(), catalog["title"].tolist()
    channels = {**channels, "dense": DenseChannel.build(ids, titles, replace(encoder, bf16=False), dense_cache)}
    query = "cordless drill 20 volt"
    ids, _ = channels["dense"].search([query], k=20)
    pairs = pd.DataFrame({"query_norm": query, "item_id": ids[0]})
    reusing = PairScorer(channels, catalog, reuse_channel_vectors=True)
    encoding = PairScorer(channels, catalog)
    np.testing.assert_allclose(reusing.features(pairs).to_numpy(), encoding.features(pairs).to_numpy(),
                               rtol=1e-5, atol=1e-6)
    assert reusing._queries[query][0] is channels["dense"].recent_vector(query)  # the very array, not a re-encode
    assert encoding._queries[query][0] is not channels["dense"].recent_vector(query)
