"""Properties of query normalization: every stage keys queries by these functions, so they must be
idempotent and blind to the spelling differences users make (case, spacing) but not to punctuation."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from pipelines.text import normalize_query, query_id, query_split

WORD = st.text(alphabet=string.ascii_letters + string.digits + "/-.#\"'", min_size=1, max_size=12)
SPACE = st.sampled_from([" ", "  ", "\t", "\n", " \u3000", "\u00a0"])  # \u3000, nbsp: NFKC folds to space


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_query(text)
    assert normalize_query(once) == once


@given(st.lists(WORD, min_size=1, max_size=6), st.data())
def test_query_id_ignores_whitespace(words: list[str], data: st.DataObject) -> None:
    spaced = "".join(w + data.draw(SPACE) for w in words)
    padded = data.draw(SPACE) + spaced
    assert query_id(padded) == query_id(" ".join(words))
    assert query_split(padded) == query_split(" ".join(words))


@given(st.text(alphabet=string.ascii_letters + string.digits + " /-.", min_size=1))
def test_query_id_ignores_case(text: str) -> None:
    assert query_id(text.upper()) == query_id(text.lower()) == query_id(text.swapcase())
    assert query_split(text.upper()) == query_split(text.lower())


@given(st.text())
def test_query_id_is_16_hex_chars(text: str) -> None:
    key = query_id(text)
    assert len(key) == 16 and set(key) <= set(string.hexdigits.lower())


def test_punctuation_is_kept() -> None:
    assert normalize_query('  1/2" PVC   Pipe ') == '1/2" pvc pipe'
    assert query_id("sc-141") != query_id("sc141")


def test_split_is_about_one_fifth_dev() -> None:
    splits = [query_split(f"query {i}") for i in range(5000)]
    assert set(splits) == {"train", "dev"}
    assert 0.17 < splits.count("dev") / len(splits) < 0.23
