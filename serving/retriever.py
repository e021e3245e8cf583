"""What /retrieve does, as plain functions on loaded state; serving/service.py only wires HTTP.

A request: normalize (pipelines.text.normalize_query, the one normalization) -> encode -> FAISS
top-k -> ONE batched online lookup of the `retriever_online` features for every returned
(query, item) pair -> blend (pipelines.index.blend) -> items best first. Encode and search take
a batch of concurrent requests at once (`find`: one forward pass, one scan of the index); lookup
and blend are per request (`answer`).

If the online store fails (Redis down, a timeout, anything), the answer still comes from the index:
features null, scores from the blend with no features (the model score's order), `degraded: true`.
The first failure and the recovery are logged once each, not per request; the Redis client
reconnects by itself, so the next request after Redis returns gets features again. A store that
answers but has lost data (flushed, restarted empty: no error, only nulls) is caught by the
background watermark check (serving/store_watch.py): answers then say `degraded: true` and name
the lost views in `missing_views`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from pipelines.features.dataset import definitions_hash
from pipelines.features.online import OnlineFeatures
from pipelines.features.watermark import StoreCheck
from pipelines.index.blend import Blend
from pipelines.index.store import find_index, load_encoder, load_index, search
from pipelines.settings import Settings
from pipelines.text import normalize_query, query_id
from pipelines.workspace import masked
from serving.schema import Hit, RetrieveResponse, Versions

logger = logging.getLogger("unisup.serving")


@dataclass
class Timings:
    """Milliseconds per stage of one request, sent back as a Server-Timing header."""

    ms: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - since) * 1000
        return now

    def header(self) -> str:
        return ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in self.ms.items())


@dataclass
class Found:
    """One request's share of a batched encode + search: top-k index rows and model scores."""

    rows: np.ndarray
    scores: np.ndarray
    batch: int  # requests in the batch it rode in
    encode_ms: float  # of the whole batch
    search_ms: float


class OnlineHealth:
    """Whether the last online read worked; logs each change of state once."""

    def __init__(self) -> None:
        self.ok = True
        self._lock = threading.Lock()

    def record(self, ok: bool, error: BaseException | None = None) -> None:
        with self._lock:
            if ok == self.ok:
                return
            self.ok = ok
        if ok:
            logger.warning("online store is back: responses carry features again")
        else:
            logger.error("online store failed (%s: %s): answering from the index with features null, "
                         "degraded=true", type(error).__name__, error)


def fail_fast(online: OnlineFeatures, timeout: float) -> None:
    """No hanging on a dead socket, no retries with backoff: a request degrades within `timeout`."""
    connector = getattr(online.reader, "connector", None)  # Redis; an embedded SQLite file has no socket
    if connector is not None:
        connector.fail_fast(timeout)


class LoadedRetriever:
    """Encoder, index, blend and online-feature client of one deployment, loaded once."""

    def __init__(self, settings: Settings):
        ws = settings.as_workspace()
        self.loaded = load_index(settings.index or find_index(ws.indexes_dir))
        manifest = self.loaded.manifest
        threads = settings.encoder_threads
        self.encoder = load_encoder(manifest, ws.models_dir, settings.model_dir, threads=threads)
        faiss.omp_set_num_threads(threads)  # the encoder's share of the cores, not all of them
        self.blend = Blend.load(self.loaded.path)
        self.online = OnlineFeatures(ws, service=manifest.feature_service)
        fail_fast(self.online, settings.online_timeout)
        self.health = OnlineHealth()
        self.versions = Versions(
            model=manifest.model_version, index=manifest.index_version, feature_service=manifest.feature_service,
            feature_definitions=definitions_hash(self.online.store, self.online.service)[:12],
            blend=self.blend.fitted.get("created") if self.blend else None)
        if self.blend and self.blend.fitted.get("definitions_sha256", "")[:12] != self.versions.feature_definitions:
            logger.warning("blend in %s was fitted on other feature definitions; refit with `unisup index blend`",
                           self.loaded.path)
        self.encode([normalize_query("warm up")])  # first call pays one-off allocations

    def metadata(self) -> dict:
        """GET /metadata: versions, index manifest, blend provenance and the online store's state,
        probed now (each worker process keeps its own connection, so a remembered state could be stale)."""
        probe = self.lookup(query_id(normalize_query("metadata probe")), self.loaded.item_ids[:1])
        return {"versions": self.versions.model_dump(), "index": asdict(self.loaded.manifest),
                "blend": self.blend.fitted if self.blend else None,
                "online_store": {"url": masked(self.online.ws.online), "ok": probe is not None},
                "features": self.online.feature_names}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) unit vectors of already-normalized texts."""
        return self.encoder.encode(list(texts))

    def find(self, requests: Sequence[tuple[str, int]]) -> list[Found]:
        """Top-k rows for a batch of (normalized query, k): one forward pass for all the queries and
        one search call, whose scan of the index serves every query of the batch."""
        t0 = time.perf_counter()
        vectors = self.encode([query for query, _ in requests])
        t1 = time.perf_counter()
        scores, rows = search(self.loaded.index, vectors, max(k for _, k in requests))
        t2 = time.perf_counter()
        return [Found(rows[i, :k], scores[i, :k], len(requests), (t1 - t0) * 1000, (t2 - t1) * 1000)
                for i, (_, k) in enumerate(requests)]

    def answer(self, query: str, norm: str, found: Found, with_features: bool, timings: Timings,
               store: StoreCheck) -> RetrieveResponse:
        """The response for one request's search result: features looked up and blended, best first;
        `store` is the last watermark check (serving/store_watch.py), naming views the store lost."""
        t = time.perf_counter()
        keep = found.rows >= 0  # FAISS pads with -1 when k exceeds the catalog
        rows, model_scores = found.rows[keep], found.scores[keep].astype(np.float64)
        item_ids, titles = self.loaded.item_ids[rows], self.loaded.titles[rows]
        qid = query_id(norm)
        columns = self.lookup(qid, item_ids) if with_features else None
        t = timings.add("features", t)
        final = self.blend.scores(model_scores, columns) if self.blend else model_scores
        order = np.argsort(-final, kind="stable")
        items = [Hit.model_construct(item_id=item_ids[i], title=titles[i], score=float(final[i]),
                                     model_score=float(model_scores[i]), features=_row(columns, i))
                 for i in order]
        timings.add("blend", t)
        missing = store.missing(self.online.views)
        return RetrieveResponse.model_construct(
            query=query, query_norm=norm, query_id=qid, k=len(found.rows), items=items, versions=self.versions,
            degraded=with_features and (columns is None or bool(missing)), missing_views=missing,
            stale_views=store.stale(self.online.views))

    def lookup(self, qid: str, item_ids: Sequence[str]) -> dict[str, list] | None:
        """One batched online read of every (query, item) pair, or None if the store failed."""
        try:
            columns = self.online.get_online_columns([(qid, item) for item in item_ids])
        except Exception as exc:  # noqa: BLE001 - any store failure degrades the answer, never fails it
            self.health.record(False, exc)
            return None
        self.health.record(True)
        return columns


def _row(columns: dict[str, list] | None, i: int) -> dict | None:
    """Item i's features as JSON-ready values (NaN -> None), without the key columns."""
    if columns is None:
        return None
    return {name: None if isinstance(v := col[i], float) and math.isnan(v) else v
            for name, col in columns.items() if name not in ("query_id", "item_id")}
