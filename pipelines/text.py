"""Query normalization and the keys derived from it.

Every stage (ingest, signals, training, serving) calls these functions, so the same text
always maps to the same query_id and the same split.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SPACE = re.compile(r"\s+")
_DEV_PERCENT = 20  # share of training queries held out as the dev split, by hash


def normalize_query(text: str) -> str:
    """Lower-case, NFKC-fold and collapse whitespace; punctuation is kept because it
    carries meaning in product search (sizes like 1/2", model numbers like SC-141)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", folded).strip()


def query_id(text: str) -> str:
    """First 16 hex chars of sha256(normalized text): stable across runs and machines."""
    return hashlib.sha256(normalize_query(text).encode("utf-8")).hexdigest()[:16]


def query_split(text: str) -> str:
    """'dev' for ~20% of queries chosen by hash of the normalized text, else 'train'.

    Hash-based so a query lands in the same split in every run and in every dataset that
    contains it; nothing may be fitted on 'dev'."""
    digest = hashlib.sha256(("split:" + normalize_query(text)).encode("utf-8")).digest()
    return "dev" if int.from_bytes(digest[:4], "big") % 100 < _DEV_PERCENT else "train"
