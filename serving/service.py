"""The retriever as a BentoML service: `bentoml serve serving.service:RetrieverService` or `unisup serve`.

Settings come from pipelines/settings.py (UNISUP_* environment or the UNISUP_CONFIG file); the work is in
serving/retriever.py. Concurrent /retrieve requests share one encoder forward pass and one index
scan through an in-process adaptive batcher (serving/batcher.py). Stage times go back in a
Server-Timing header (queue: waiting for a batch to start), the size of the batch a request rode in
as X-Encode-Batch. What a request reads is one Bundle of versions, switched without downtime by
POST /admin/reload or the workspace's pointer file (serving/deployment.py); the online store's
watermark is checked in the background (serving/store_watch.py) and flags answers and /readyz.
"""

from __future__ import annotations

import os
import time
from http import HTTPStatus

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from pipelines.settings import Settings
from pipelines.text import normalize_query
from serving.limits import RequestLimits
from serving.schema import (
    DEFAULT_CANDIDATES,
    DEFAULT_K,
    DEFAULT_SEARCH_K,
    EXAMPLE_QUERY,
    EncodeTexts,
    ReloadRequest,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
)

with bentoml.importing():
    from serving.deployment import Deployment, ReloadRefused
    from serving.retriever import Timings

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage analytics: nothing leaves loopback
info = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # routes beside BentoML's APIs
LOOPBACK = ("127.0.0.1", "::1")


@bentoml.service(
    name="unisup_retriever",
    http={"host": "127.0.0.1", "port": 3000},
    workers=Settings.load().workers,  # processes; each loads encoder and index once, its threads share them
    traffic={"timeout": 30, "max_concurrency": 256},
)
@bentoml.asgi_app(info, path="/")
class RetrieverService:
    """POST /retrieve, /search, /encode, /admin/reload; GET /metadata. /healthz, /livez and /readyz come
    with BentoML: ready once __init__ has loaded model, index and registry, and while the online store
    holds every view the answers read (`__is_ready__`). A failing online store degrades answers
    (`degraded: true`) but never makes the service unready; one that lost views does (it answers on)."""

    def __init__(self) -> None:
        self.deployment = Deployment(Settings.load())

    def __is_ready__(self) -> bool:
        """/readyz 503 while views are missing: every answer would be index-only. Stale views (values
        served, but old) and an unreachable store (each request degrades and recovers on its own)
        leave it ready; GET /metadata's `online_views` says which views and why."""
        return not self.deployment.missing_views()

    @bentoml.api
    def encode(self, texts: EncodeTexts) -> np.ndarray:
        """Unit-length embeddings of up to MAX_BATCH texts, encoded as given (/retrieve normalizes its
        query first; item titles are indexed as they are), with the index's model."""
        return self.deployment.current.retriever.encode(texts)

    @bentoml.api(input_spec=RetrieveRequest, output_spec=RetrieveResponse)
    async def retrieve(self, ctx: bentoml.Context, query: str = EXAMPLE_QUERY, k: int = DEFAULT_K,
                       with_features: bool = True) -> RetrieveResponse:
        """Top-k catalog items for a query, scored by the blend of model score and online features."""
        bundle = self.deployment.current  # read once: the whole request runs on these versions
        t, norm = time.perf_counter(), normalize_query(query)
        found = await bundle.batcher((norm, k))
        waited = (time.perf_counter() - t) * 1000
        timings = Timings({"queue": max(waited - found.encode_ms - found.search_ms, 0.0),
                           "encode": found.encode_ms, "search": found.search_ms})
        response = await anyio.to_thread.run_sync(bundle.retriever.answer, query, norm, found, with_features,
                                                  timings, self.deployment.store.state)
        ctx.response.headers["Server-Timing"] = timings.header()
        ctx.response.headers["X-Encode-Batch"] = str(found.batch)
        return response

    @bentoml.api(input_spec=SearchRequest, output_spec=SearchResponse)
    async def search(self, ctx: bentoml.Context, query: str = EXAMPLE_QUERY, k: int = DEFAULT_SEARCH_K,
                     n: int = DEFAULT_CANDIDATES, explain: bool = False) -> SearchResponse:
        """Top-k of n candidates by the ranker's value model, with relevance and engagement estimates."""
        bundle = self.deployment.current
        if bundle.searcher is None:
            raise SearchUnavailable(f"/search has no ranker: {bundle.search_error}")
        timings = Timings()
        response = await anyio.to_thread.run_sync(bundle.searcher.search, query, k, n, explain, timings,
                                                  self.deployment.store.state)
        ctx.response.headers["Server-Timing"] = timings.header()
        return response

    @info.get("/metadata")
    def metadata(self) -> dict:
        """Model, index and feature-service versions, blend provenance, online-store state; this process's
        deployment (loaded_at, reloads, previous versions) and the views the online store holds."""
        bundle = self.deployment.current
        return {**bundle.retriever.metadata(), "deployment": self.deployment.describe(bundle),
                "online_views": self.deployment.store.state.describe()}

    @info.post("/admin/reload")
    async def admin_reload(self, request: Request) -> JSONResponse:
        """Switch to another index / ranker (body: ReloadRequest) without downtime: 202 once the names are
        checked; every worker process then loads and switches (serving/deployment.py; GET /metadata shows
        it). Off unless settings.admin_reload; loopback clients only."""
        if not self.deployment.settings.admin_reload:
            return _error(403, "admin reload is off: start the service with UNISUP_ADMIN_RELOAD=true")
        if request.client is None or request.client.host not in LOOPBACK:
            return _error(403, "admin reload answers loopback clients only")
        try:
            body = ReloadRequest.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return JSONResponse({"error": "invalid reload request",
                                 "detail": exc.errors(include_url=False, include_context=False, include_input=False)},
                                status_code=400)
        try:
            return JSONResponse(self.deployment.reload(body.index, body.ranker), status_code=202)
        except ReloadRefused as exc:
            return _error(exc.status, str(exc))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class SearchUnavailable(bentoml.exceptions.BentoMLException):
    """503 JSON: the deployment has no (loadable) ranker."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


RetrieverService.add_asgi_middleware(RequestLimits)
