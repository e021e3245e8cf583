"""The pre-ranking stage of a search stack: what /search (and bench_prerank) run per request.

retrieve N_r (data.retrieve) -> the light model on all of them -> the strong model on the routed band
(route.py; its request-time pair features and ONE online lookup of the ranker's store features, for
the band only) -> the N kept go to the ranker. The HAP-trained pair serves; `budget` is the share of
the N_r candidates routed (0: light alone, 1: strong on everything).

Composed onto a SearchStack by the layer above both (serving, benchmarks): pipelines.ranking does
not import this package, which builds on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.preranking.data import retrieve
from pipelines.preranking.route import keep, route
from pipelines.preranking.store import PrerankerFiles, scores
from pipelines.ranking.features import assemble, pair_features
from pipelines.retrieval.pair_features import PRIOR
from pipelines.workspace import ConfigError, Workspace


class Prerank:
    def __init__(self, ws: Workspace, name: str, budget: float, stack):
        if not 0.0 <= budget <= 1.0:
            raise ConfigError(f"pre-ranking budget {budget} must lie in [0, 1]")
        models, self.specs, self.meta = PrerankerFiles.of(ws, name).load()
        self.light, self.strong = models["light-hap"], models["strong-hap"]
        self.name, self.budget, self.stack = name, budget, stack
        self.n_retrieve = int(self.meta["data"]["n_retrieve"])
        trained_with = self.meta["data"]["ranker"]
        if trained_with != stack.name:
            raise ConfigError(f"pre-ranker {name!r} was trained for ranker {trained_with!r}, not {stack.name!r}")

    def candidates(self, texts: Sequence[str], query_ids: Sequence[str], n: int,
                   progress: bool = True) -> pd.DataFrame:
        """The n candidates per (normalized) query the ranker sees, with the fusion's columns, in
        retrieve's order (by query, then the ranker's fusion score, as SearchStack.candidates)."""
        rows = retrieve(self.stack.runner, texts, query_ids, self.stack.candidate_model, self.n_retrieve, progress)
        return self.select(rows.assign(query_norm=rows["query_id"].map(dict(zip(query_ids, texts)))), n)

    def select(self, rows: pd.DataFrame, n: int) -> pd.DataFrame:
        """The kept n of retrieved rows (with query_norm) per query."""
        light = scores(self.light, self.specs["light"], rows) if self.budget < 1.0 else np.zeros(len(rows))
        frame = rows[["query_id", "item_id"]].assign(light=light, strong=np.nan)  # budget 1: all routed
        routed = route(frame, n, self.budget)
        if routed.any():
            band = rows[routed]
            stored, _ = self.stack.lookup(band, degrade=True)
            frame.loc[routed, "strong"] = scores(self.strong, self.specs["strong"],
                                                 assemble(band, pair_features(self.stack.scorer, band), stored))
        return rows.loc[keep(frame, n, self.budget), ["query_id", "item_id", *PRIOR]].reset_index(drop=True)
