"""What POST /compare does: one query through two configurations, side by side, for the inspector page.

A configuration is a way to rank the catalog that this deployment can run:
- "bm25": the lexical channel alone (BM25 over titles), the baseline a search team knows;
- "retrieve": /retrieve's answer (the served index, its blend of model score and online features);
- "rrf": the ranker's candidates in the fusion's own order (bm25 + trained bi-encoder + character
  n-grams, reciprocal-rank fusion);
- "search", "search@relevance", "search@engagement", "search@lambdamart": /search's answer and its
  ablations (pipelines.ranking.search), on the same candidates.
The "rrf" and "search" family need the deployment's ranker; without one they are listed as unavailable.

Every row of either column is annotated from ONE online lookup of the `ranker_online` service for the
union of both columns' items: the teacher's grade distribution, the gated engagement, the prior's
channel ranks. The human grade is shown only where a TRAINING query's judgment exists: dev queries are
what the project is measured on, and a page that showed their judgments would invite tuning on them.
Each row's `explain` holds the score's decomposition (the blend's w_i * z_i terms, the value model's
terms, the fusion's 1 / (60 + rank) terms) and the features the configuration read.

The page (serving/inspector/) is a thin client of this JSON; a script can call it the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.index.blend import raw_inputs
from pipelines.ranking.config import VARIANTS
from pipelines.retrieval.fusion import ABSENT, RRF_K
from pipelines.retrieval.runner import ModelRunner
from pipelines.settings import Settings
from pipelines.text import normalize_query, query_id
from serving.retriever import LoadedRetriever, Timings, fail_fast
from serving.schema import MAX_CANDIDATES
from serving.search import LoadedSearch, plain

SERVICE = "ranker_online"  # what the rows are annotated with: every signal's ranking features
TEACHER = ("grade_p0", "grade_p1", "grade_p2", "grade_p3", "expected_grade", "confidence")
ENGAGEMENT = ("is_relevant", "impressions_30d", "clicks_30d", "gated_clicks_30d", "gated_orders_30d", "gated_ctr_30d")
CHANNELS = ("bm25", "dense", "char")
ALWAYS = ("bm25", "retrieve")
WITH_RANKER = ("rrf", "search", *(f"search@{v}" for v in VARIANTS if v != "value"))
DESCRIPTIONS = {
    "bm25": "BM25 over titles alone",
    "retrieve": "/retrieve: the served index, blended with online features",
    "rrf": "the ranker's candidates by reciprocal-rank fusion (bm25 + bi-encoder + char n-grams)",
    "search": "/search: the ranker's value model",
    "search@relevance": "the ranker's expected grade alone",
    "search@engagement": "the ranker's engagement heads alone: P(click) + 2 P(order)",
    "search@lambdamart": "the LightGBM LambdaMART baseline on the ranker's features",
}


class UnknownConfig(ValueError):
    """A configuration name this deployment cannot run; the message lists the ones it can."""


@dataclass
class Column:
    """One configuration's top k: item ids best first, their scores, decompositions and features."""

    config: str
    item_ids: list[str]
    scores: list[float]
    terms: list[dict[str, float]]
    features: list[dict[str, float | str | None]]
    formula: str
    versions: dict
    degraded: bool = False
    timings: Timings = field(default_factory=Timings)


class Inspector:
    """The compare function of one deployment bundle: its retriever, its search stack if any."""

    def __init__(self, settings: Settings, retriever: LoadedRetriever, searcher: LoadedSearch | None,
                 search_error: str | None):
        self.ws, self.retriever, self.searcher = settings.as_workspace(), retriever, searcher
        self.search_error = search_error
        self.timeout = settings.online_timeout
        self._lock = threading.Lock()
        self._online = None
        self._runner: ModelRunner | None = searcher.stack.runner if searcher else None
        self._grades: dict[str, dict[str, float]] | None = None
        self._titles_by_id: dict[str, str] | None = None

    def configs(self) -> dict:
        """GET /compare: what can be compared here, and why the rest cannot."""
        available = [*ALWAYS, *(WITH_RANKER if self.searcher else ())]
        return {"configs": [{"name": name, "description": DESCRIPTIONS[name]} for name in available],
                "unavailable": {} if self.searcher else {n: f"no ranker: {self.search_error}" for n in WITH_RANKER},
                "default": ["bm25", "search" if self.searcher else "retrieve"]}

    def check(self, name: str) -> None:
        if name in WITH_RANKER and not self.searcher:
            raise UnknownConfig(f"configuration {name!r} needs a ranker, and this deployment has none "
                                f"({self.search_error})")
        if name not in ALWAYS and name not in WITH_RANKER:
            known = ", ".join([*ALWAYS, *(WITH_RANKER if self.searcher else ())])
            raise UnknownConfig(f"configuration {name!r} is unknown: expected one of {known}")

    def compare(self, query: str, left: str, right: str, k: int, n: int, store) -> dict:
        """Both columns, annotated from one online lookup; `store` is the last watermark check."""
        self.check(left)
        self.check(right)
        norm = normalize_query(query)
        qid = query_id(norm)
        candidates, scored, retrieve_ms = self._candidates(norm, qid, n, (left, right))
        columns = [self._column(name, norm, k, candidates, scored, retrieve_ms, store) for name in (left, right)]
        union = list(dict.fromkeys(item for column in columns for item in column.item_ids))
        t = time.perf_counter()
        annotations, failed = self._annotate(qid, union)
        lookup_ms = (time.perf_counter() - t) * 1000
        origin = _origins(candidates)
        grades = self._human_grades().get(qid, {})
        titles = self._titles()
        missing = store.missing(self._online_client().views)
        return {
            "query": query, "query_norm": norm, "query_id": qid, "k": k, "n": n,
            "known_query": any(_pick(row, TEACHER) for row in annotations.values()),
            "annotation_ms": round(lookup_ms, 2),
            "degraded": failed or bool(missing), "missing_views": missing,
            "columns": [{
                "config": c.config, "description": DESCRIPTIONS[c.config], "formula": c.formula,
                "versions": c.versions, "degraded": c.degraded or failed or bool(missing),
                "timings_ms": {stage: round(ms, 2) for stage, ms in c.timings.ms.items()},
                "items": [{
                    "rank": r + 1, "item_id": item, "title": titles.get(item), "score": c.scores[r],
                    "origin": origin.get(item, {}),
                    "teacher": _pick(annotations.get(item), TEACHER),
                    "engagement": _pick(annotations.get(item), ENGAGEMENT),
                    "human_grade": grades.get(item),
                    "explain": {"terms": c.terms[r], "features": c.features[r]},
                } for r, item in enumerate(c.item_ids)],
            } for c in columns],
        }

    def _candidates(self, norm: str, qid: str, n: int, configs: Sequence[str]):
        """The candidate model's whole fused list (for every row's channel ranks) and, when a search
        configuration is asked for, the ranker's scores of its first n (what /search scores)."""
        if not self.searcher:
            return None, None, 0.0
        stack = self.searcher.stack
        t = time.perf_counter()
        candidates = stack.candidates([norm], [qid], n=MAX_CANDIDATES, progress=False)
        retrieve_ms = (time.perf_counter() - t) * 1000
        scored = None
        if any(c.startswith("search") for c in configs):
            scored = stack.score([norm], [qid], n, progress=False, degrade=True,
                                 lambdamart=any(c == "search@lambdamart" for c in configs),
                                 candidates=candidates.head(n))
            scored.seconds["retrieve"] = retrieve_ms / 1000
        return candidates, scored, retrieve_ms

    def _column(self, name: str, norm: str, k: int, candidates, scored, retrieve_ms: float, store) -> Column:
        if name == "bm25":
            return self._bm25(norm, k)
        if name == "retrieve":
            return self._retrieve(norm, k, store)
        if name == "rrf":
            return self._rrf(candidates.head(k), retrieve_ms)
        return self._search(name, scored, k)

    def _bm25(self, norm: str, k: int) -> Column:
        timings = Timings()
        t = time.perf_counter()
        ids, scores = self._bm25_channel().search([norm], k)
        timings.add("retrieve", t)
        keep = ids[0] != ""
        ids, scores = ids[0][keep].tolist(), scores[0][keep].astype(float).tolist()
        return Column("bm25", ids, scores, [{"bm25": s} for s in scores], [{} for _ in ids],
                      "BM25 (k1 = 1.5, b = 0.75) of the title for the query", {"channel": "bm25"}, timings=timings)

    def _retrieve(self, norm: str, k: int, store) -> Column:
        retriever, timings = self.retriever, Timings()
        t = time.perf_counter()
        found = retriever.find([(norm, k)])[0]
        timings.add("retrieve", t)
        answer = retriever.answer(norm, norm, found, True, timings, store)
        hits = answer.items
        blend = retriever.blend
        model_scores = np.array([h.model_score for h in hits], dtype=np.float64)
        if blend is None:
            terms = [{"model_score": s} for s in model_scores]
            formula = "score = cosine of query and item embeddings (no blend fitted)"
        else:
            columns = {name: [h.features.get(name) if h.features else None for h in hits] for name in blend.features}
            shares = blend.terms_raw(raw_inputs(blend.inputs, model_scores, columns))
            terms = [{"intercept": blend.intercept, **dict(zip(blend.inputs, (row + 0.0).tolist()))}  # no -0.0
                     for row in shares]
            formula = "score = sigmoid(intercept + sum of w_i z_i): the blend's P(relevant)"
        return Column("retrieve", [h.item_id for h in hits], [h.score for h in hits], terms,
                      [{"model_score": h.model_score, **(h.features or {})} for h in hits], formula,
                      answer.versions.model_dump(), degraded=answer.degraded, timings=timings)

    def _rrf(self, top: pd.DataFrame, retrieve_ms: float) -> Column:
        terms = [{c: (1.0 / (RRF_K + int(row[f"rank_{c}"])) if row[f"rank_{c}"] < ABSENT else 0.0) for c in CHANNELS}
                 for row in top.to_dict("records")]
        return Column("rrf", top["item_id"].tolist(), top["fusion_score"].astype(float).tolist(), terms,
                      [{f"rank_{c}": int(row[f"rank_{c}"]) for c in CHANNELS} | {"agreement": int(row["agreement"])}
                       for row in top.to_dict("records")],
                      f"fusion_score = sum over channels of 1 / ({RRF_K} + rank); absent from a top 100: 0",
                      {"candidates": self.searcher.stack.candidate_model}, timings=Timings({"retrieve": retrieve_ms}))

    def _search(self, name: str, scored, k: int) -> Column:
        stack = self.searcher.stack
        variant = name.partition("@")[2] or stack.variant
        top = stack.order(scored.rows, variant).head(k)
        terms = stack.terms(top, variant)
        inputs = [*stack.spec.columns, "expected_relevance", "p_grade_ge1", "p_grade_ge2", "p_grade_ge3",
                  "p_click", "p_order"]
        records = top.to_dict("records")
        timings = Timings({stage: seconds * 1000 for stage, seconds in scored.seconds.items()})
        formula = {"lambdamart": "score = LambdaMART's output", "engagement": "score = P(click) + 2 P(order)",
                   "relevance": "score = expected grade (sum of P(grade >= k))"}.get(
            variant, f"value = expected grade + {stack.weights.click_weight:g} P(click) + "
                     f"{stack.weights.order_weight:g} P(order)")
        return Column(name, top["item_id"].tolist(), top["value"].astype(float).tolist(),
                      [{term: float(values[i]) for term, values in terms.items()} for i in range(len(top))],
                      [{c: plain(row.get(c)) for c in inputs} for row in records], formula,
                      {**self.searcher.versions.model_dump(), "ranker": f"{stack.name}@{variant}"},
                      degraded=scored.degraded, timings=timings)

    def _annotate(self, qid: str, items: list[str]) -> tuple[dict[str, dict], bool]:
        """item -> its `ranker_online` features for this query (one batched read); failed: the store did not answer."""
        client = self._online_client()
        try:
            columns = client.get_online_columns(client.entity_rows(query_id=qid, item_id=items))  # anonymous
        except Exception:  # noqa: BLE001 - the page shows rows without annotations, flagged degraded
            return {}, True
        names = [n for n in columns if n not in client.entity_columns]
        return {item: {n: plain(columns[n][i]) for n in names} for i, item in enumerate(items)}, False

    def _online_client(self):
        with self._lock:
            if self._online is None:
                if self.searcher:
                    self._online = self.searcher.stack.online
                else:
                    from pipelines.features.online import OnlineFeatures

                    self._online = OnlineFeatures(self.ws, SERVICE)
                    fail_fast(self._online, self.timeout)
            return self._online

    def _bm25_channel(self):
        with self._lock:
            if self._runner is None:
                self._runner = ModelRunner(self.ws.lake.read("items"), self.ws.models_dir)
            return self._runner.channel("bm25")

    def _titles(self) -> dict[str, str]:
        with self._lock:
            if self._titles_by_id is None:
                loaded = self.retriever.loaded
                self._titles_by_id = dict(zip(loaded.item_ids.tolist(), loaded.titles.tolist()))
            return self._titles_by_id

    def _human_grades(self) -> dict[str, dict[str, float]]:
        """query_id -> item_id -> human grade, for training queries only (never dev: see the module doc)."""
        with self._lock:
            if self._grades is None:
                queries = self.ws.lake.read("queries")
                train = set(queries.loc[queries["split"] == "train", "query_id"])
                judged = self.ws.lake.read("judgments")
                judged = judged[judged["query_id"].isin(train)]
                grades: dict[str, dict[str, float]] = {}
                for qid, item, grade in zip(judged["query_id"], judged["item_id"], judged["relevance"]):
                    grades.setdefault(qid, {})[item] = float(grade)
                self._grades = grades
            return self._grades


def _origins(candidates: pd.DataFrame | None) -> dict[str, dict[str, int]]:
    """item -> {channel: rank} for the channels whose top 100 holds it (the candidates' fusion columns)."""
    if candidates is None:
        return {}
    ranks = {c: candidates[f"rank_{c}"].to_numpy() for c in CHANNELS}
    return {item: {c: int(ranks[c][i]) for c in CHANNELS if ranks[c][i] < ABSENT}
            for i, item in enumerate(candidates["item_id"])}


def _pick(row: dict | None, names: Sequence[str]) -> dict | None:
    if row is None:
        return None
    picked = {n: row[n] for n in names if n in row}
    return picked if any(v is not None for v in picked.values()) else None
