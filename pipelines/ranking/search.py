"""The search stack: candidates -> request-time features -> ONE online lookup -> ranker -> value.

The one function behind `unisup eval --model search:RANKER`, `unisup ab` and BentoML's /search, for a
batch of queries (eval) or one request. Model names: "search:NAME" ranks by the value model with
the weights chosen on calib queries; "search:NAME@VARIANT" is an ablation of the same stack:

- relevance:  expected grade alone (the relevance head);
- engagement: P(click) + 2 P(order) alone (the engagement heads);
- lambdamart: the LightGBM lambdarank baseline trained beside the ranker on the same features.

Store features come from the online store (`ranker_online`): when it fails (Redis down), the stack
ranks with request-time features only and says so (`degraded`); the next request tries again.

The same lookup reads the user's views (user_stats, user_brand: rows carry the user and each
candidate's brand), and every candidate gets the calibrated pCTR / pCVR of pipelines.engagement as
`p_ctr` / `p_cvr` for that user. They are reported beside the value, not in it: the value model's
engagement terms are the ranker's own heads, whose weights were chosen on calib queries against
NDCG@10, trained on traffic that includes an exploration slice over all candidates; the pCTR model
has seen only BM25's top 10 and would extrapolate on the rest (ranking/data.py explains why that
went wrong once). Ranking by them is measured in no A/B yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.engagement.store import EngagementFiles
from pipelines.metrics import DEPTH
from pipelines.ranking.config import VARIANTS
from pipelines.ranking.features import assemble, pair_features
from pipelines.ranking.store import OUTPUTS, RankerFiles, predict
from pipelines.ranking.value import ValueWeights, value_terms
from pipelines.retrieval.pair_features import PairScorer
from pipelines.retrieval.runner import ModelRunner, Run
from pipelines.simulation.users import brand_of
from pipelines.workspace import Workspace

SERVICE = "ranker_online"
ENGAGEMENT_OUTPUTS = {"click": "p_ctr", "order": "p_cvr"}  # calibrated pCTR, pCVR (pipelines.engagement)
LOOKUP_CHUNK = 20_000  # pairs per online read in batch (eval) use
ENGAGEMENT_ONLY = ValueWeights(click_weight=1.0, order_weight=2.0)


@dataclass
class Ranked:
    """Candidates of a batch with their features, the ranker's outputs and `value`, best first per
    query; per-stage seconds; whether the store was unreachable."""

    rows: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    degraded: bool = False


class SearchStack:
    def __init__(self, ws: Workspace, name: str, variant: str, runner: ModelRunner, online=None):
        if variant not in VARIANTS:
            raise ValueError(f"ranker variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        self.ws, self.name, self.variant, self.runner = ws, name, variant, runner
        self.model, self.spec, self.booster, self.meta = RankerFiles.of(ws, name).load()
        self.candidate_model = self.meta["data"]["candidates"]
        self.n = int(self.meta["data"]["n"])
        self.weights = ValueWeights(**self.meta["value_weights"])  # the value model chosen on calib queries
        items = ws.lake.read("items")
        self.scorer = PairScorer(runner.fused_channels(self.candidate_model), items, reuse_channel_vectors=True)
        self.brands = pd.Series(brand_of(items["title"]).to_numpy(), index=items["item_id"].astype(str))
        self.engagement = engagement_models(ws)
        self._online = online
        self.prerank = None  # pipelines.preranking.stage.Prerank, when serving runs one

    @classmethod
    def load(cls, ws: Workspace, ref: str, runner: ModelRunner | None = None, online=None) -> SearchStack:
        """ref is "NAME" or "NAME@VARIANT"."""
        name, _, variant = ref.partition("@")
        runner = runner or ModelRunner(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
        return cls(ws, name, variant or "value", runner, online)

    @property
    def online(self):
        if self._online is None:
            from pipelines.features.online import OnlineFeatures

            self._online = OnlineFeatures(self.ws, SERVICE)
        return self._online

    def rank(self, texts: Sequence[str], query_ids: Sequence[str], n: int | None = None,
             progress: bool = True, degrade: bool = False, known: pd.DataFrame | None = None,
             user_id: str | None = None) -> Ranked:
        """Score the top-n candidates of each (normalized) query and sort them by this stack's
        variant, best first per query (see `score` for the arguments)."""
        scored = self.score(texts, query_ids, n, progress, degrade, known, lambdamart=self.variant == "lambdamart",
                            user_id=user_id)
        t = time.perf_counter()
        scored.rows = self.order(scored.rows, self.variant)
        scored.seconds["rank"] += time.perf_counter() - t
        return scored

    def score(self, texts: Sequence[str], query_ids: Sequence[str], n: int | None = None,
              progress: bool = True, degrade: bool = False, known: pd.DataFrame | None = None,
              lambdamart: bool = True, candidates: pd.DataFrame | None = None, user_id: str | None = None) -> Ranked:
        """The top-n candidates of each (normalized) query with their features and every output
        (relevance and engagement heads, the LambdaMART score), unsorted: what every variant sorts.
        degrade: an online-store failure ranks without store features (a request) instead of raising
        (a batch evaluation, whose figures must not silently change regime). known: pair rows
        (query_id, item_id, store feature columns) standing in for the store's where it has none
        (pipelines.ranking.precompute: the known-query regime for queries new to the store).
        lambdamart: also score with the baseline (a request skips it unless the stack serves it).
        candidates: this stack's `candidates` of the queries, when the caller has them already.
        user_id: whose user features the lookup reads beside the pairs' (None or a user the store
        does not know: null user features, so the engagement models give the population's rates)."""
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        rows = self.candidates(texts, query_ids, n, progress) if candidates is None else candidates.copy()
        norm = dict(zip(query_ids, texts))
        rows["query_norm"] = rows["query_id"].map(norm)
        t1 = time.perf_counter()
        seconds["retrieve"] = t1 - t0
        request = pair_features(self.scorer, rows)
        t2 = time.perf_counter()
        seconds["features"] = t2 - t1
        stored, degraded = self.lookup(rows, degrade, user_id)
        if known is not None:
            stored = stored.fillna(rows[["query_id", "item_id"]].merge(known, how="left").reindex(
                columns=self.spec.store).set_axis(rows.index))
        t3 = time.perf_counter()
        seconds["lookup"] = t3 - t2
        rows = assemble(rows, request, stored)
        rows = pd.concat([rows, predict(self.model, self.spec, rows)], axis=1)
        rows["lambdamart"] = self.booster.predict(self.spec.raw(rows)) if lambdamart else np.nan
        top_slot = rows.assign(position=1) if self.engagement else None  # calibrated, as if shown first
        for target, column in ENGAGEMENT_OUTPUTS.items():
            model = self.engagement.get(target)
            rows[column] = model.predict(top_slot) if model is not None else np.nan
        seconds["rank"] = time.perf_counter() - t3
        return Ranked(rows, seconds, degraded)

    def candidates(self, texts: Sequence[str], query_ids: Sequence[str], n: int | None = None,
                   progress: bool = True) -> pd.DataFrame:
        """The candidate model's top n (default: the ranker's n) per (normalized) query, with the
        fusion's columns (pipelines.retrieval.runner.ModelRunner.candidates); with a pre-ranking stage
        (`prerank`, composed on by serving: pipelines.preranking.stage), the n it keeps of its N_r."""
        if self.prerank is not None:
            return self.prerank.candidates(texts, query_ids, n or self.n, progress=progress)
        return self.runner.candidates(texts, query_ids, self.candidate_model, n or self.n, progress=progress)

    def order(self, rows: pd.DataFrame, variant: str) -> pd.DataFrame:
        """rows with `value` by the variant's score, sorted best first per query (ties by item id)."""
        return best_first(rows, sum(self.terms(rows, variant).values()))

    def terms(self, rows: pd.DataFrame, variant: str) -> dict[str, np.ndarray]:
        """The variant's score per row as named additive terms; their sum is what `order` sorts by."""
        if variant == "lambdamart":
            return {"lambdamart": rows["lambdamart"].to_numpy()}
        p_click, p_order = rows["p_click"].to_numpy(), rows["p_order"].to_numpy()
        if variant == "engagement":  # the value model without its relevance term
            return value_terms(np.zeros(len(rows)), p_click, p_order, ENGAGEMENT_ONLY)
        weights = self.weights if variant == "value" else ValueWeights()
        return value_terms(rows["expected_relevance"].to_numpy(), p_click, p_order, weights)

    def lookup(self, rows: pd.DataFrame, degrade: bool = False, user_id: str | None = None
               ) -> tuple[pd.DataFrame, bool]:
        """The store features of every row, the ranker's and the engagement models' (one online read
        per chunk; a request is one chunk), and whether the store failed (then, with `degrade`,
        every store feature is null)."""
        entity_rows = self.online.entity_rows(query_id=rows["query_id"], item_id=rows["item_id"],
                                              brand=rows["item_id"].map(self.brands).fillna(""), user_id=user_id or "")
        columns = list(dict.fromkeys([*self.spec.store, *self.online.feature_names]))
        try:
            parts = [self.online.get_online_features(entity_rows[i:i + LOOKUP_CHUNK])
                     for i in range(0, len(entity_rows), LOOKUP_CHUNK)]
        except Exception:  # noqa: BLE001 - any store failure: degraded answer for a request
            if not degrade:
                raise
            return pd.DataFrame(np.nan, index=rows.index, columns=columns), True
        stored = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        return stored.reindex(columns=columns).set_axis(rows.index), False

    def runs(self, texts: Sequence[str], query_ids: Sequence[str], depth: int = DEPTH,
             known: pd.DataFrame | None = None) -> tuple[Run, float]:
        """The top-`depth` run by value, and seconds for the whole stack (eval's view of it)."""
        started = time.perf_counter()
        return to_run(self.rank(texts, query_ids, known=known).rows, depth), round(time.perf_counter() - started, 2)

    def versions(self) -> dict[str, str | None]:
        return {"ranker": f"{self.name}@{self.variant}", "created": self.meta["created"],
                "candidates": self.candidate_model, "feature_service": SERVICE,
                "preranker": None if self.prerank is None else f"{self.prerank.name}@{self.prerank.budget:g}"}


def engagement_models(ws: Workspace, name: str = "engagement") -> dict:
    """The workspace's calibrated pCTR / pCVR models (pipelines.engagement), or none before
    `unisup engagement train`: /search then answers p_ctr and p_cvr as null."""
    files = EngagementFiles.of(ws, name)
    return files.load() if files.meta.exists() else {}


def best_first(rows: pd.DataFrame, score) -> pd.DataFrame:
    """rows with `value` = score, sorted best first per query, ties by item id: the one ordering that
    /search, eval, the trade-off and the trainer's calib checks share."""
    return rows.assign(value=np.asarray(score, np.float64)).sort_values(
        ["query_id", "value", "item_id"], ascending=[True, False, True], kind="stable").reset_index(drop=True)


def to_run(rows: pd.DataFrame, depth: int = DEPTH) -> Run:
    """Rows sorted by best_first -> each query's top `depth` as a run {query_id: {item_id: value}},
    items in rank order."""
    top = rows.groupby("query_id", sort=False).head(depth)
    run: Run = {}
    for qid, item, score in zip(top["query_id"], top["item_id"], top["value"]):
        run.setdefault(qid, {})[item] = float(score)
    return run


__all__ = ["OUTPUTS", "Ranked", "SearchStack"]
