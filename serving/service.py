"""The retriever as a BentoML service: `bentoml serve serving.service:RetrieverService` or `unisup serve`.

Settings come from pipelines/settings.py (UNISUP_* environment or the UNISUP_CONFIG file); the work is in
serving/retriever.py. Concurrent /retrieve requests share one encoder forward pass and one index
scan through an in-process adaptive batcher (serving/batcher.py). Stage times go back in a
Server-Timing header (queue: waiting for a batch to start), the size of the batch a request rode in
as X-Encode-Batch.
"""

from __future__ import annotations

import os
import time
from http import HTTPStatus

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI

from pipelines.settings import Settings
from pipelines.text import normalize_query
from serving.limits import RequestLimits
from serving.schema import (
    DEFAULT_CANDIDATES,
    DEFAULT_K,
    DEFAULT_SEARCH_K,
    EXAMPLE_QUERY,
    MAX_BATCH,
    EncodeTexts,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
)

with bentoml.importing():
    from serving.batcher import MicroBatcher
    from serving.retriever import LoadedRetriever, Timings
    from serving.search import LoadedSearch

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage analytics: nothing leaves loopback
info = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # GET routes beside BentoML's POST APIs


@bentoml.service(
    name="unisup_retriever",
    http={"host": "127.0.0.1", "port": 3000},
    workers=Settings.load().workers,  # processes; each loads encoder and index once, its threads share them
    traffic={"timeout": 30, "max_concurrency": 256},
)
@bentoml.asgi_app(info, path="/")
class RetrieverService:
    """POST /retrieve, GET /metadata. /healthz, /livez and /readyz come with BentoML: ready once
    __init__ has loaded model, index and registry; a failing online store degrades answers
    (`degraded: true`) but never makes the service unready."""

    def __init__(self) -> None:
        settings = Settings.load()
        self.core = LoadedRetriever(settings)
        self.batcher = MicroBatcher(self.core.find, max_batch=MAX_BATCH, lanes=settings.lanes)
        self.searcher, self.search_error = None, None
        try:  # /retrieve serves without a ranker; /search then says why it cannot
            self.searcher = LoadedSearch(settings)
        except (LookupError, FileNotFoundError) as exc:
            self.search_error = str(exc)

    @bentoml.api
    def encode(self, texts: EncodeTexts) -> np.ndarray:
        """Unit-length embeddings of up to MAX_BATCH texts, encoded as given (/retrieve normalizes its
        query first; item titles are indexed as they are), with the index's model."""
        return self.core.encode(texts)

    @bentoml.api(input_spec=RetrieveRequest, output_spec=RetrieveResponse)
    async def retrieve(self, ctx: bentoml.Context, query: str = EXAMPLE_QUERY, k: int = DEFAULT_K,
                       with_features: bool = True) -> RetrieveResponse:
        """Top-k catalog items for a query, scored by the blend of model score and online features."""
        t, norm = time.perf_counter(), normalize_query(query)
        found = await self.batcher((norm, k))
        waited = (time.perf_counter() - t) * 1000
        timings = Timings({"queue": max(waited - found.encode_ms - found.search_ms, 0.0),
                           "encode": found.encode_ms, "search": found.search_ms})
        response = await anyio.to_thread.run_sync(self.core.answer, query, norm, found, with_features, timings)
        ctx.response.headers["Server-Timing"] = timings.header()
        ctx.response.headers["X-Encode-Batch"] = str(found.batch)
        return response

    @bentoml.api(input_spec=SearchRequest, output_spec=SearchResponse)
    async def search(self, ctx: bentoml.Context, query: str = EXAMPLE_QUERY, k: int = DEFAULT_SEARCH_K,
                     n: int = DEFAULT_CANDIDATES, explain: bool = False) -> SearchResponse:
        """Top-k of n candidates by the ranker's value model, with relevance and engagement estimates."""
        if self.searcher is None:
            raise SearchUnavailable(f"/search has no ranker: {self.search_error}")
        timings = Timings()
        response = await anyio.to_thread.run_sync(self.searcher.search, query, k, n, explain, timings)
        ctx.response.headers["Server-Timing"] = timings.header()
        return response

    @info.get("/metadata")
    def metadata(self) -> dict:
        """Model, index and feature-service versions, blend provenance, online-store state."""
        return self.core.metadata()


class SearchUnavailable(bentoml.exceptions.BentoMLException):
    """503 JSON: the deployment has no (loadable) ranker."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


RetrieverService.add_asgi_middleware(RequestLimits)
