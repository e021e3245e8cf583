"""Request-time features of (query, item) pairs, computed the same way wherever a pair is scored.

Features per pair come from the retrieval channels and their fusion, all computed per pair against
the whole catalog, so a pair's features do not depend on which other pairs are scored with it (the
teacher scores ~200 candidates per query, its report a handful of judged items, the ranker one
request's candidates):

- the fusion: rank_bm25, rank_dense, rank_char (101 = not in that channel's top 100), fusion_score,
  agreement;
- BM25 score of the title for the query, the query's best BM25 score over the catalog and their
  ratio; dense cosine, the query's best cosine over the catalog and the gap; character n-gram
  TF-IDF cosine;
- query and title lengths in tokens, token overlap (count, share of the query, share of the title),
  and whether every number in the query (sizes, model numbers) appears in the title.

The teacher's stage 1 (pipelines.teacher.stage1) reads them over the prior's channels (MiniLM
dense); the ranker (pipelines.ranking) over its candidate model's channels (rrf:VERSION).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.retrieval.bm25 import tokenize
from pipelines.retrieval.fusion import ABSENT

PRIOR = ["rank_bm25", "rank_dense", "rank_char", "fusion_score", "agreement"]
FEATURES = PRIOR + ["bm25", "bm25_max", "bm25_ratio", "dense_cos", "dense_max", "dense_gap", "char_cos",
                    "query_tokens", "title_tokens", "overlap", "overlap_query", "overlap_title",
                    "numbers_found"]
_NUMBER = re.compile(r"\d")
CHUNK = 50_000  # pairs per sparse row-product block (bounded memory for the char cosine)
MEMO = 100_000  # query embeddings kept between calls (a batch's queries always fit)


class PairScorer:
    """Per-pair scores from the three channels of one catalog (pipelines.retrieval.build_channels)."""

    def __init__(self, channels: dict, items: pd.DataFrame, reuse_channel_vectors: bool = False):
        """reuse_channel_vectors: take a query's vector from the dense channel's recent searches when
        both run float32 (/search and eval: the candidates were just retrieved with it). Off for the
        teacher, whose labels must not depend on which searches ran before in the process."""
        self.channels, self.reuse_channel_vectors = channels, reuse_channel_vectors
        self.bm25, self.dense, self.char = channels["bm25"], channels["dense"], channels["char"]
        self.row = pd.Series(np.arange(len(items)), index=items["item_id"].astype(str).to_numpy())
        self.titles = items["title"].astype(str).to_numpy()
        self.item_vectors = self.dense.index.reconstruct_n(0, self.dense.index.ntotal)  # (n_items, dim)
        self.char_rows = self.char.matrix_t.T.tocsr()  # (n_items, n_grams), unit rows
        # float32 whatever the channel runs: `_dense` batches whichever queries are new at the time, so
        # a batch's make-up depends on call order (fit + calibrate + label, or label alone when the
        # teacher is reused); bfloat16 moves a vector by ~1e-3 with its batch-mates, float32 by ~1e-7,
        # and labels must not depend on whether this run fitted the teacher
        self.query_encoder = replace(self.dense.encoder, bf16=False)
        self._title_tokens: dict[int, frozenset] = {}
        self._queries: dict[str, tuple[np.ndarray, float]] = {}  # text -> (embedding, best cosine)

    def _dense(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Query embeddings and best catalog cosine, memoized: the producer scores the same queries
        for fitting, calibration and labelling, and encoding is the dearest step of stage 1."""
        new = [t for t in dict.fromkeys(texts) if t not in self._queries]
        if len(self._queries) + len(new) > MEMO:  # a long-lived server sees endless new queries
            self._queries.clear()
        if self.reuse_channel_vectors and not self.dense.encoder.bf16:  # float32 as ours: reuse its vectors
            found = {t: v for t in new if (v := self.dense.recent_vector(t)) is not None}
            if found:
                best, _ = self.dense.index.search(np.stack(list(found.values())), 1)
                self._queries.update({t: (v, float(b)) for (t, v), b in zip(found.items(), best[:, 0])})
                new = [t for t in new if t not in found]
        if new:
            vectors = self.query_encoder.encode(new, batch_size=512)  # (n_new, dim)
            best, _ = self.dense.index.search(vectors, 1)
            self._queries.update({t: (v, float(b)) for t, v, b in zip(new, vectors, best[:, 0])})
        return (np.stack([self._queries[t][0] for t in texts]),
                np.array([self._queries[t][1] for t in texts], dtype=np.float32))

    def titles_of(self, item_ids) -> list[str]:
        return self.titles[self._rows(item_ids)].tolist()

    def _rows(self, item_ids) -> np.ndarray:
        rows = self.row.reindex(pd.Index(item_ids).astype(str)).to_numpy()
        if np.isnan(rows.astype(np.float64)).any():
            raise KeyError("pairs name items missing from the catalog")
        return rows.astype(np.int64)

    def _bm25_scores(self, query: str) -> np.ndarray:
        vocab = self.bm25.retriever.vocab_dict
        ids = [vocab[t] for t in tokenize(query) if t in vocab]
        if not ids:
            return np.zeros(len(self.titles), dtype=np.float32)
        return self.bm25.retriever.get_scores(ids)

    def _tokens(self, row: int) -> frozenset:
        if row not in self._title_tokens:
            self._title_tokens[row] = frozenset(tokenize(self.titles[row]))
        return self._title_tokens[row]

    def features(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """FEATURES for rows (query_id, item_id, query_norm[, prior columns]); absent prior columns
        mean the pair was not retrieved (ranks 101, fusion 0, agreement 0)."""
        pairs = pairs.reset_index(drop=True)
        out = pd.DataFrame(index=pairs.index)
        for col in PRIOR:
            default = ABSENT if col.startswith("rank_") else 0
            values = pairs[col] if col in pairs.columns else pd.Series(default, index=pairs.index)
            out[col] = values.fillna(default).astype(np.float32)
        rows = self._rows(pairs["item_id"])
        qcodes, qtexts = pd.factorize(pairs["query_norm"])
        qtexts = list(qtexts)

        bm25, bm25_max = np.zeros(len(pairs), np.float32), np.zeros(len(qtexts), np.float32)
        order = np.argsort(qcodes, kind="stable")
        bounds = np.flatnonzero(np.diff(qcodes[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            scores = self._bm25_scores(qtexts[qcodes[group[0]]])
            bm25[group] = scores[rows[group]]
            bm25_max[qcodes[group[0]]] = scores.max()
        out["bm25"] = bm25
        out["bm25_max"] = bm25_max[qcodes]
        out["bm25_ratio"] = np.where(out["bm25_max"] > 0, bm25 / np.maximum(bm25_max[qcodes], 1e-6), 0.0)

        qvec, best = self._dense(qtexts)  # (n_queries, dim), (n_queries,)
        out["dense_cos"] = np.einsum("ij,ij->i", qvec[qcodes], self.item_vectors[rows])
        out["dense_max"] = best[qcodes]
        out["dense_gap"] = out["dense_max"] - out["dense_cos"]

        qchar = self.char.vectorizer.transform(qtexts).tocsr()
        char = np.zeros(len(pairs), np.float32)
        for start in range(0, len(pairs), CHUNK):
            sl = slice(start, start + CHUNK)
            prod = qchar[qcodes[sl]].multiply(self.char_rows[rows[sl]])
            char[sl] = np.asarray(sp.csr_matrix(prod).sum(axis=1)).ravel()
        out["char_cos"] = char

        qtok = [frozenset(tokenize(q)) for q in qtexts]
        qnum = [frozenset(t for t in q if _NUMBER.search(t)) for q in qtok]
        lex = np.zeros((len(pairs), 5), np.float32)
        for i, (qc, r) in enumerate(zip(qcodes, rows)):
            q, t = qtok[qc], self._tokens(r)
            common = len(q & t)
            lex[i] = (len(q), len(t), common, common / max(len(q), 1), common / max(len(t), 1))
        out[["query_tokens", "title_tokens", "overlap", "overlap_query", "overlap_title"]] = lex
        out["numbers_found"] = [float(qnum[qc] <= self._tokens(r)) if qnum[qc] else 1.0
                                for qc, r in zip(qcodes, rows)]
        return out[FEATURES].astype(np.float32)
