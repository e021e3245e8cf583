"""The /retrieve contract: request validation and the response shape.

Validation is strict: a number where a string belongs, "5" for k or "yes" for with_features is a
400, not a guess, and unknown fields are refused so a misspelt `top_k` cannot pass silently.
BentoML turns a failed validation into 400 {"error": ..., "detail": [{"loc", "msg", "type"}]}.
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.text import normalize_query

MAX_QUERY_CHARS = 1000
MAX_K = 1000
DEFAULT_K = 100
MAX_BATCH = 64  # texts per /encode call and per encoder forward pass
EXAMPLE_QUERY = "cordless drill 18 volt"

# POST /encode: 1..MAX_BATCH texts, embedded as given with the index model.
EncodeTexts = Annotated[list[Annotated[str, Field(max_length=MAX_QUERY_CHARS)]],
                        Field(min_length=1, max_length=MAX_BATCH)]


class RetrieveRequest(bentoml.IODescriptor):
    """POST /retrieve body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=[EXAMPLE_QUERY],
                       description=f"Search text, 1..{MAX_QUERY_CHARS} characters, not only whitespace")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, description=f"Items to return, 1..{MAX_K}")
    with_features: bool = Field(True, description="Read online features and blend them into the score; "
                                                  "false ranks by the model score alone (no lookup)")

    @field_validator("query")
    @classmethod
    def _searchable(cls, query: str) -> str:
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate escaped in the JSON ("\\ud800")
            raise ValueError(f"query is not valid Unicode text ({exc.reason} at position {exc.start})") from None
        if not normalize_query(query):
            raise ValueError("query is empty after normalization (only whitespace)")
        return query


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


class RetrieveResponse(bentoml.IODescriptor):
    """POST /retrieve answer: items best first."""

    query: str
    query_norm: str
    query_id: str
    k: int
    items: list[Hit]
    versions: Versions
    degraded: bool = Field(description="true when features were wanted but the online store failed")
