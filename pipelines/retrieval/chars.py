"""Character n-gram channel: what word-level BM25 and a word-piece encoder miss.

Queries in product search misspell ("winow", "eiectric concrte"), glue or split model numbers
("sc141" for "#SC-141", "r-13" for "R13") and write sizes many ways. BM25 needs an exact token and
MiniLM's word pieces split such strings into unrelated fragments. Character 3..5-grams within word
boundaries (scikit-learn `char_wb`) still overlap on most of a misspelled word; each alphanumeric
code is also added with its punctuation removed ("sc-141" -> "sc141"), so glued and hyphenated
spellings share n-grams. Scores are TF-IDF cosines (sublinear tf, unit rows), top-k per query from a
sparse product with the catalog matrix, a block of queries at a time so memory stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from pipelines.retrieval import Hits, to_hits
from pipelines.retrieval.bm25 import canonical_text

NGRAMS = (3, 5)  # shorter grams match almost everything, longer ones rarely survive a typo
BLOCK = 512  # queries per sparse product; the dense (BLOCK, n_items) float32 block is ~110 MB at 54k
_CODE = re.compile(r"[a-z0-9]+(?:[-./#][a-z0-9]+)+")
_HAS_DIGIT, _HAS_ALPHA = re.compile(r"\d"), re.compile(r"[a-z]")


def char_text(text: str) -> str:
    """canonical_text plus each mixed letter-digit code squashed ("#sc-141" adds "sc141").

    Pure numbers keep their punctuation: squashing "1/2" into "12" would merge two sizes."""
    text = canonical_text(text)
    codes = [c for c in _CODE.findall(text) if _HAS_DIGIT.search(c) and _HAS_ALPHA.search(c)]
    squashed = [re.sub(r"[-./#]", "", c) for c in codes]
    return " ".join([text, *squashed])


class CharChannel:
    """TF-IDF over character 3..5-grams of titles, cosine similarity, exact top-k."""

    name = "char"

    def __init__(self, vectorizer: TfidfVectorizer, matrix: sp.csr_matrix, item_ids: np.ndarray):
        self.vectorizer = vectorizer
        self.matrix_t = matrix.T.tocsr()  # (n_grams, n_items): query rows @ this = cosine rows
        self.item_ids = np.asarray(item_ids, dtype=object)

    @classmethod
    def build(cls, item_ids: Sequence[str], titles: Sequence[str]) -> CharChannel:
        """Fit the n-gram vocabulary and idf on catalog titles (never on queries).

        min_df=1: a model number usually occurs in one title, and its grams are the point."""
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, preprocessor=char_text,
                                     sublinear_tf=True, min_df=1, dtype=np.float32)
        matrix = vectorizer.fit_transform(list(titles)).tocsr()
        return cls(vectorizer, matrix, np.asarray(item_ids, dtype=object))

    def search(self, queries: Sequence[str], k: int = 100) -> Hits:
        """Top-k items per query by cosine; items sharing no n-gram with the query are not returned."""
        queries = list(queries)
        k_eff = min(k, len(self.item_ids))
        rows = np.empty((len(queries), k_eff), dtype=np.int64)
        scores = np.empty((len(queries), k_eff), dtype=np.float32)
        for start in range(0, len(queries), BLOCK):
            block = self.vectorizer.transform(queries[start:start + BLOCK])
            sims = torch.from_numpy((block @ self.matrix_t).toarray())  # (block, n_items)
            top = sims.topk(k_eff, dim=1)
            rows[start:start + len(sims)] = top.indices.numpy()
            scores[start:start + len(sims)] = top.values.numpy()
        return to_hits(np.where(scores > 0, rows, -1), scores, self.item_ids, k)
