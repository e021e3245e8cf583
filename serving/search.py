"""What /search does, on loaded state: pipelines.ranking.search.SearchStack for one request.

normalize -> candidates (rrf:VERSION top n; with a pre-ranker, the n it keeps of N_r, pipelines.preranking)
-> request-time pair features -> ONE batched online
lookup of `ranker_online` for the n pairs and the user -> ranker -> value model -> top k, each with
the calibrated pCTR / pCVR for that user. When the online store
fails the stack ranks on request-time features alone and the answer says `degraded: true`; the
client fails fast (the retriever's timeouts, no retries) and reconnects by itself on a later request.
Views the store has lost (serving/store_watch.py) degrade the answer too and are named in `missing_views`.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime

from pipelines.features.dataset import definitions_hash
from pipelines.features.watermark import StoreCheck
from pipelines.preranking.stage import Prerank
from pipelines.ranking.search import SearchStack
from pipelines.ranking.store import CUMULATIVE
from pipelines.settings import Settings
from pipelines.text import normalize_query, query_id
from serving.retriever import OnlineHealth, Timings, fail_fast
from serving.schema import Ranked, SearchResponse, SearchVersions

logger = logging.getLogger("unisup.serving")


class LoadedSearch:
    """The search stack of one deployment (candidate channels, ranker, online client), loaded once."""

    def __init__(self, settings: Settings):
        ws = settings.as_workspace()
        self.stack = SearchStack.load(ws, settings.ranker)
        if settings.preranker:
            self.stack.prerank = Prerank(ws, settings.preranker, settings.prerank_budget, self.stack)
        fail_fast(self.stack.online, settings.online_timeout)
        self.titles = ws.lake.read("items").set_index("item_id")["title"].astype(str)
        self.health = OnlineHealth()
        versions = self.stack.versions()
        self.versions = SearchVersions(
            ranker=versions["ranker"], ranker_created=versions["created"], candidates=versions["candidates"],
            feature_service=versions["feature_service"], preranker=versions["preranker"],
            feature_definitions=definitions_hash(self.stack.online.store, self.stack.online.service)[:12])
        self.search("warm up", k=1, n=10, explain=False, timings=Timings(),  # one-off allocations
                    store=StoreCheck(datetime.now(UTC)))

    def search(self, query: str, k: int, n: int, explain: bool, timings: Timings, store: StoreCheck,
               user_id: str | None = None) -> SearchResponse:
        """The top k of n candidates for `user_id` (None: anyone); `store` is the last watermark
        check, naming views the store lost."""
        norm = normalize_query(query)
        qid = query_id(norm)
        ranked = self.stack.rank([norm], [qid], n=n, progress=False, degrade=True, user_id=user_id)
        self.health.record(not ranked.degraded, RuntimeError("online lookup failed") if ranked.degraded else None)
        for stage, seconds in ranked.seconds.items():
            timings.ms[stage] = seconds * 1000
        t = time.perf_counter()
        top = ranked.rows.head(k)
        inputs = self.stack.spec.columns if explain else []
        items = [Ranked.model_construct(
            item_id=row["item_id"], title=self.titles.get(row["item_id"]), value=float(row["value"]),
            expected_relevance=float(row["expected_relevance"]),
            relevance={c.removeprefix("p_"): float(row[c]) for c in CUMULATIVE},
            p_click=float(row["p_click"]), p_order=float(row["p_order"]),
            p_ctr=plain(row["p_ctr"]), p_cvr=plain(row["p_cvr"]),
            features={c: plain(row[c]) for c in inputs} if explain else None)
            for row in top.to_dict("records")]
        timings.add("respond", t)
        views = self.stack.online.views
        missing = store.missing(views)
        return SearchResponse.model_construct(query=query, query_norm=norm, query_id=qid, k=len(items),
                                              candidates=len(ranked.rows), items=items, versions=self.versions,
                                              degraded=ranked.degraded or bool(missing), missing_views=missing,
                                              stale_views=store.stale(views))


def plain(value) -> float | str | None:
    """A feature value as JSON: null or NaN (unknown) -> null, numbers -> float, text as it is."""
    if value is None or isinstance(value, str):
        return value
    value = float(value)
    return None if math.isnan(value) else value
