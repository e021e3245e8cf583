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
from pathlib import Path

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from pipelines.settings import Settings
from pipelines.text import normalize_query
from serving.limits import RequestLimits
from serving.schema import (
    DEFAULT_CANDIDATES,
    DEFAULT_K,
    DEFAULT_SEARCH_K,
    EXAMPLE_QUERY,
    CompareRequest,
    EncodeTexts,
    ReloadRequest,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
)

with bentoml.importing():
    from serving.compare import UnknownConfig
    from serving.deployment import Deployment, ReloadRefused
    from serving.retriever import Timings

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage analytics: nothing leaves loopback
info = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # routes beside BentoML's APIs
LOOPBACK = ("127.0.0.1", "::1")
INSPECTOR = Path(__file__).parent / "inspector"  # the page's files, shipped in the package: no CDN, no build
INSPECTOR_PAGE = INSPECTOR / "index.html"
# the page may only talk to this service: scripts, styles, images and fetches from its own origin
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "Cache-Control": "no-cache"}
info.mount("/inspector", StaticFiles(directory=INSPECTOR), name="inspector")


@bentoml.service(
    name="unisup_retriever",
    http={"host": "127.0.0.1", "port": 3000},
    workers=Settings.load().workers,  # processes; each loads encoder and index once, its threads share them
    traffic={"timeout": 30, "max_concurrency": 256},
)
@bentoml.asgi_app(info, path="/")
class RetrieverService:
    """POST /retrieve, /search, /encode, /compare, /admin/reload; GET / (the inspector page), /compare,
    /metadata. /healthz, /livez and /readyz come with BentoML: ready once __init__ has loaded model,
    index and registry, and while the online store holds every view the answers read
    (`__is_ready__`). A failing online store degrades answers (`degraded: true`) but never makes the
    service unready; one that lost views does (it answers on)."""

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
                     n: int = DEFAULT_CANDIDATES, explain: bool = False, user_id: str | None = None
                     ) -> SearchResponse:
        """Top-k of n candidates by the ranker's value model, with relevance and engagement estimates
        (calibrated for `user_id` when given)."""
        bundle = self.deployment.current
        if bundle.searcher is None:
            raise SearchUnavailable(f"/search has no ranker: {bundle.search_error}")
        timings = Timings()
        response = await anyio.to_thread.run_sync(bundle.searcher.search, query, k, n, explain, timings,
                                                  self.deployment.store.state, user_id)
        ctx.response.headers["Server-Timing"] = timings.header()
        return response

    @info.get("/", response_class=HTMLResponse)
    def inspector_page(self) -> HTMLResponse:
        """The inspector (serving/inspector/): a query through two configurations, side by side."""
        return HTMLResponse(INSPECTOR_PAGE.read_text(), headers=PAGE_HEADERS)

    @info.get("/compare")
    def compare_configs(self) -> dict:
        """The configurations POST /compare can run in this deployment, and why the others cannot."""
        return self.deployment.current.inspector.configs()

    @info.post("/compare")
    async def compare(self, request: Request) -> JSONResponse:
        """One query through two configurations (body: CompareRequest), each row annotated with the
        teacher's grades, gated engagement, channel ranks, the human grade of a training judgment and
        the score's decomposition: what the inspector page shows (serving/compare.py)."""
        try:
            body = CompareRequest.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return _invalid("invalid compare request", exc)
        bundle = self.deployment.current
        try:
            answer = await anyio.to_thread.run_sync(
                bundle.inspector.compare, body.query, body.left, body.right, body.k, body.n,
                self.deployment.store.state)
        except UnknownConfig as exc:
            return _error(400, str(exc))
        return JSONResponse(answer)

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
            return _invalid("invalid reload request", exc)
        try:
            return JSONResponse(self.deployment.reload(body.index, body.ranker), status_code=202)
        except ReloadRefused as exc:
            return _error(exc.status, str(exc))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _invalid(message: str, exc: ValidationError) -> JSONResponse:
    """400 in BentoML's shape for its own APIs: {"error", "detail": [{"loc", "msg", "type"}]}."""
    return JSONResponse({"error": message, "detail": exc.errors(include_url=False, include_context=False,
                                                                 include_input=False)}, status_code=400)


class SearchUnavailable(bentoml.exceptions.BentoMLException):
    """503 JSON: the deployment has no (loadable) ranker."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE


RetrieverService.add_asgi_middleware(RequestLimits)
