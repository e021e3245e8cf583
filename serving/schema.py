"""The /retrieve contract: request validation and the response shape.

Validation is strict: a number where a string belongs, "5" for k or "yes" for with_features is a
400, not a guess, and unknown fields are refused so a misspelt `top_k` cannot pass silently.
BentoML turns a failed validation into 400 {"error": ..., "detail": [{"loc", "msg", "type"}]}.
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.text import normalize_query

MAX_QUERY_CHARS = 1000
MAX_USER_ID_CHARS = 128
MAX_K = 1000
DEFAULT_K = 100
MAX_BATCH = 64  # texts per /encode call and per encoder forward pass
EXAMPLE_QUERY = "cordless drill 18 volt"

# POST /encode: 1..MAX_BATCH texts, embedded as given with the index model.
EncodeTexts = Annotated[list[Annotated[str, Field(max_length=MAX_QUERY_CHARS)]],
                        Field(min_length=1, max_length=MAX_BATCH)]


def searchable(query: str) -> str:
    """The query rule of /retrieve and /search: valid Unicode, not empty once normalized."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped in the JSON ("\\ud800")
        raise ValueError(f"query is not valid Unicode text ({exc.reason} at position {exc.start})") from None
    if not normalize_query(query):
        raise ValueError("query is empty after normalization (only whitespace)")
    return query


def n_covers_k(request):
    """The rule of /search and /compare: the ranker picks k of n candidates."""
    if request.n < request.k:
        raise ValueError(f"n ({request.n}) must be at least k ({request.k}): the ranker picks k of n candidates")
    return request


class RetrieveRequest(bentoml.IODescriptor):
    """POST /retrieve body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=[EXAMPLE_QUERY],
                       description=f"Search text, 1..{MAX_QUERY_CHARS} characters, not only whitespace")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description=f"Items to return, 1..{MAX_K}")
    with_features: bool = Field(True, description="Read online features and blend them into the score; "
                                                  "false ranks by the model score alone (no lookup)")

    _searchable = field_validator("query")(searchable)


class Hit(BaseModel):
    item_id: str
    title: str | None
    score: float = Field(description="Blended score, P(relevant) (pipelines.index.blend); model_score without a blend")
    model_score: float = Field(description="Cosine of query and item embeddings")
    features: dict[str, Any] | None = Field(description="retriever_online features; null if not read or unavailable")


class Versions(BaseModel):
    model: str
    index: str
    feature_service: str
    feature_definitions: str = Field(description="sha256 prefix of the service's and its views' definitions")
    blend: str | None = Field(description="when the blend was fitted; null: score = model_score")


# The online store's state as each answer reports it (serving/store_watch.py), for /retrieve and /search alike
MissingViews = Annotated[list[str], Field(default_factory=list, description=(
    "Views of this answer's feature service the online store has lost (flushed, restarted empty, evicted: "
    "pipelines/features/watermark.py); their features are null and degraded is true"))]
StaleViews = Annotated[list[str], Field(default_factory=list, description=(
    "Views whose online values are older than their ttl or than the registry's materialization end: "
    "served, but old (GET /metadata says which and why)"))]


class RetrieveResponse(bentoml.IODescriptor):
    """POST /retrieve answer: items best first."""

    query: str
    query_norm: str
    query_id: str
    k: int
    items: list[Hit]
    versions: Versions
    degraded: bool = Field(description="true when features were wanted but the online store failed or has "
                                       "lost views they come from")
    missing_views: MissingViews
    stale_views: StaleViews


MAX_SEARCH_K = 100
DEFAULT_SEARCH_K = 10
MAX_CANDIDATES = 1000
DEFAULT_CANDIDATES = 200


class SearchRequest(bentoml.IODescriptor):
    """POST /search body: the full stack (retrieve n -> one online lookup -> rank -> top k)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=[EXAMPLE_QUERY],
                       description=f"Search text, 1..{MAX_QUERY_CHARS} characters, not only whitespace")
    k: int = Field(DEFAULT_SEARCH_K, ge=1, le=MAX_SEARCH_K, description=f"Items to return, 1..{MAX_SEARCH_K}")
    n: int = Field(DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES,
                   description=f"Candidates the ranker scores, k..{MAX_CANDIDATES} (fewer if retrieval finds fewer)")
    explain: bool = Field(False, description="Return each item's ranker features too")
    user_id: str | None = Field(None, min_length=1, max_length=MAX_USER_ID_CHARS,
                                description="Who searches: the user's features join the one online lookup; "
                                            "a user the store does not know gets the population's rates")

    _searchable = field_validator("query")(searchable)
    _n_covers_k = model_validator(mode="after")(n_covers_k)


class Ranked(BaseModel):
    item_id: str
    title: str | None
    value: float = Field(description="The value model's score the list is sorted by (pipelines.ranking.value)")
    expected_relevance: float = Field(description="Expected grade 0..3 = sum of P(grade >= k)")
    relevance: dict[str, float] = Field(description="P(grade >= 1), P(grade >= 2), P(grade >= 3)")
    p_click: float = Field(description="P(click | examined)")
    p_order: float = Field(description="P(order | examined)")
    p_ctr: float | None = Field(None, description="Calibrated P(click) in the top slot for this user "
                                                  "(pipelines.engagement; null before `unisup engagement train`)")
    p_cvr: float | None = Field(None, description="Calibrated P(order | click) for this user (as p_ctr)")
    features: dict[str, Any] | None = Field(None, description="The ranker's input features (explain=true)")


class SearchVersions(BaseModel):
    ranker: str
    ranker_created: str
    candidates: str = Field(description="Candidate model (rrf:VERSION)")
    feature_service: str
    feature_definitions: str = Field(description="sha256 prefix of the service's and its views' definitions")
    preranker: str | None = Field(None, description="Pre-ranker NAME@BUDGET between retrieval and the ranker, if any")


class SearchResponse(bentoml.IODescriptor):
    """POST /search answer: the top k by value, best first."""

    query: str
    query_norm: str
    query_id: str
    k: int
    candidates: int = Field(description="Candidates scored")
    items: list[Ranked]
    versions: SearchVersions
    degraded: bool = Field(description="true when the online store failed (ranked on request-time features "
                                       "only) or has lost views the ranker's features come from")
    missing_views: MissingViews
    stale_views: StaleViews


MAX_COMPARE_K = 50


class CompareRequest(BaseModel):
    """POST /compare body: one query through two configurations (GET /compare lists them)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=[EXAMPLE_QUERY],
                       description=f"Search text, 1..{MAX_QUERY_CHARS} characters, not only whitespace")
    left: str = Field("bm25", max_length=40, description="Configuration of the left column")
    right: str = Field("search", max_length=40, description="Configuration of the right column")
    k: int = Field(DEFAULT_SEARCH_K, ge=1, le=MAX_COMPARE_K, description=f"Rows per column, 1..{MAX_COMPARE_K}")
    n: int = Field(DEFAULT_CANDIDATES, ge=1, le=MAX_CANDIDATES, description="Candidates the search configurations rank")

    _searchable = field_validator("query")(searchable)
    _n_covers_k = model_validator(mode="after")(n_covers_k)


class ReloadRequest(BaseModel):
    """POST /admin/reload body (empty = the index the service would load at start, the configured ranker)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    index: str | None = Field(None, description="Index version: a directory name under WORKSPACE/indexes "
                                                "(default: the configured index, else the newest)")
    ranker: str | None = Field(None, description="Ranker for /search, NAME[@VARIANT] (default: the configured one)")
