"""BM25 channel (bm25s) and the lexical tokenizer every lexical reader shares.

bm25s's own tokenizer keeps only `\\w\\w+` runs (so "1/2" and "5" vanish), drops "in" as a stopword
(the unit of half the catalog's sizes) and stems only through PyStemmer, which this project does not
depend on. So titles and queries go through `tokenize` here instead: unit spellings folded to one
form ('1/2"', "1/2 inch", "1/2 in." all give "1/2 inch"), fractions and decimals kept whole, the
bm25s English stopwords removed, and a plural-only "S-stemmer" (Harman 1991). A full Porter
stemmer would also merge product words that differ ("lighting"/"light", "fitting"/"fit"); plurals
are most of the singular/plural mismatch between queries and titles.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from pipelines.atomic import atomic_path
from pipelines.retrieval import Hits, to_hits
from pipelines.text import normalize_query

_UNITS = (  # (pattern after a number, canonical unit word); order matters: longest spellings first
    (r"(?:\"|''|inch(?:es)?\b|in\b\.?)", "inch"),
    (r"(?:'|feet\b|foot\b|ft\b\.?)", "ft"),
    (r"(?:gallons?\b|gal\b\.?)", "gal"),
    (r"(?:volts?\b|v\b)", "volt"),
    (r"(?:watts?\b|w\b)", "watt"),
    (r"(?:amps?\b|a\b)", "amp"),
    (r"(?:pounds?\b|lbs?\b\.?)", "lb"),
)
_UNIT_RES = [(re.compile(r"(\d)\s*-?\s*" + pat), r"\1 " + unit) for pat, unit in _UNITS]
_TIMES = re.compile(r"(\d)\s*x\s*(?=\d)")  # "2x4" -> "2 x 4"
_NUM_DASH = re.compile(r"(\d)-(?=[a-z])")  # "1-gal." -> "1 gal.", "2-pack" -> "2 pack"
_TOKEN = re.compile(r"\d*\.?\d+(?:/\d+)?|[a-z0-9]+")  # 1/2, 3.5, .8, words, model codes
STOPWORDS = frozenset(STOPWORDS_EN)


def canonical_text(text: str) -> str:
    """Normalized text with sizes and units spelled one way; the char channel reads this too."""
    text = normalize_query(text)
    text = _NUM_DASH.sub(r"\1 ", text)
    text = _TIMES.sub(r"\1 x ", text)
    for pattern, repl in _UNIT_RES:
        text = pattern.sub(repl, text)
    return text


def stem(token: str) -> str:
    """Harman's S-stemmer, plural to singular only ("hinges" -> "hinge", "batteries" -> "battery"),
    plus the sibilant plurals it misses ("boxes" -> "box", "glasses" -> "glass")."""
    if len(token) <= 3 or not token.isalpha():
        return token
    if token.endswith("ies") and not token.endswith(("eies", "aies")):
        return token[:-3] + "y"
    if token.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return token[:-2]
    if token.endswith("es") and not token.endswith(("aes", "ees", "oes")):
        return token[:-1]
    if token.endswith("s") and not token.endswith(("us", "ss")):
        return token[:-1]
    return token


def tokenize(text: str) -> list[str]:
    """The lexical tokens of a title or query (index and query sides must use the same function)."""
    return [stem(t) for t in _TOKEN.findall(canonical_text(text)) if t not in STOPWORDS]


class BM25Channel:
    """Okapi BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over catalog titles.

    The numpy backend on a thread per core: bm25s's numba backend is ~10x faster per query but
    compiles for ~8 s in every process, which costs more than it saves below ~10k queries."""

    name = "bm25"

    def __init__(self, retriever: bm25s.BM25, item_ids: np.ndarray):
        self.retriever = retriever
        self.item_ids = np.asarray(item_ids, dtype=object)

    @classmethod
    def build(cls, item_ids: Sequence[str], titles: Sequence[str]) -> BM25Channel:
        retriever = bm25s.BM25(backend="numpy")
        retriever.index([tokenize(t) for t in titles], show_progress=False)
        return cls(retriever, np.asarray(item_ids, dtype=object))

    def save(self, path: Path | str) -> Path:
        """Write the bm25s index and the row -> item_id map to a directory (whole or not at all)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.retriever.save(tmp, show_progress=False)
            (tmp / "item_ids.json").write_text(json.dumps(self.item_ids.tolist()))
        return path

    @classmethod
    def load(cls, path: Path | str) -> BM25Channel:
        path = Path(path)
        retriever = bm25s.BM25.load(path, load_corpus=False)
        return cls(retriever, np.asarray(json.loads((path / "item_ids.json").read_text()), dtype=object))

    def search(self, queries: Sequence[str], k: int = 100) -> Hits:
        """Top-k items per query; items sharing no token with the query are not returned."""
        vocab, n_terms = self.retriever.vocab_dict, len(self.retriever.scores["indptr"]) - 1
        token_ids = [[vocab[t] for t in tokenize(q) if vocab.get(t, n_terms) < n_terms] for q in queries]
        k_eff = min(k, len(self.item_ids))
        rows = np.full((len(queries), k_eff), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k_eff), dtype=np.float32)
        known = [i for i, ids in enumerate(token_ids) if ids]  # all-unknown queries match nothing
        if known:
            found, score = self.retriever.retrieve([token_ids[i] for i in known], k=k_eff,
                                                   show_progress=False, n_threads=os.cpu_count() or 1)
            rows[known], scores[known] = found, score
        rows = np.where(scores > 0, rows, -1)
        return to_hits(rows, scores, self.item_ids, k)
