"""Every model name `unisup eval` and `unisup ab` accept, behind one `runs` call.

- retrieval models (pipelines.retrieval.runner.ModelRunner): bm25, char, rrf, rrf:VERSION, an
  encoder version;
- "search:RANKER": the full search stack of a trained ranker (pipelines.ranking.search): its
  candidate model's top N, the ranker_online features in one lookup, the ranker, the value model;
  exactly what /search serves. The queries of a judgments file are new to the feature store (no
  pair rows): the new-query regime. With `precompute`, each search model is also run in the
  known-query regime as "search:RANKER+known": the producers' inference run for the file's queries
  first (pipelines.ranking.precompute), its pair rows standing in for the store's.

Runs are what metrics.evaluate reads ({query_id: {item_id: score}}); `ranker` turns a model into the
click simulator's Ranker (raw query texts -> item ids per slot).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pipelines.metrics import DEPTH, ranked
from pipelines.ranking.config import VARIANTS
from pipelines.retrieval.runner import ModelRunner, Run
from pipelines.simulation import EMPTY, Ranker
from pipelines.text import normalize_query
from pipelines.workspace import ConfigError, Workspace

SEARCH = "search:"
KNOWN = "+known"


class Models:
    """Runs of any model name over one workspace's catalog; each model loaded on first use."""

    def __init__(self, ws: Workspace, precompute: bool = False):
        self.ws, self.precompute = ws, precompute
        self.runner = ModelRunner(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
        self._stacks: dict = {}
        self._scored: dict = {}
        self._known: dict = {}

    def stack(self, model: str):
        """The search stack of "search:RANKER[@VARIANT]" (pipelines.ranking.search.SearchStack), one
        per ranker: its variants share it."""
        name, _, variant = model.removeprefix(SEARCH).partition("@")
        if variant and variant not in VARIANTS:
            raise ConfigError(f"{model!r}: ranker variant {variant!r} is none of {', '.join(VARIANTS)}")
        if name not in self._stacks:
            from pipelines.ranking.search import SearchStack

            self._stacks[name] = SearchStack.load(self.ws, name, runner=self.runner)
        return self._stacks[name]

    def scored(self, model: str, texts: Sequence[str], query_ids: Sequence[str], known: bool):
        """The ranker's outputs for every candidate of these queries in one regime, computed once per
        ranker and regime: every variant re-sorts the same rows."""
        key = (model.removeprefix(SEARCH).partition("@")[0], known, tuple(query_ids))
        if key not in self._scored:
            pairs = self.known_pairs(texts, query_ids) if known else None
            self._scored[key] = self.stack(model).score(texts, query_ids, known=pairs).rows
        return self._scored[key]

    def known_pairs(self, texts: Sequence[str], query_ids: Sequence[str]):
        """The producers' pair rows for these queries (pipelines.ranking.precompute), computed once."""
        key = tuple(query_ids)
        if key not in self._known:
            from pipelines.ranking.precompute import precompute_pair_features

            self._known[key] = precompute_pair_features(self.ws, list(texts), list(query_ids))
        return self._known[key]

    def check(self, models: Sequence[str]) -> None:
        """Fail before any work on a name that is no model."""
        for name in models:
            if name.startswith(SEARCH):
                self.stack(name)
            else:
                self.runner.check([name])

    def runs(self, texts: Sequence[str], query_ids: Sequence[str], models: Sequence[str],
             depth: int = DEPTH) -> tuple[dict[str, Run], dict[str, float]]:
        """Top-`depth` run of every model for the (normalized) queries, and seconds per model."""
        self.check(models)
        plain = [m for m in models if not m.startswith(SEARCH)]
        runs, seconds = self.runner.runs(texts, query_ids, plain, depth) if plain else ({}, {})
        searched = [m for m in models if m.startswith(SEARCH)]
        if searched:
            from pipelines.ranking.search import to_run
        for name in searched:
            for known in (False, True) if self.precompute else (False,):
                started = time.perf_counter()
                rows = self.scored(name, texts, query_ids, known)
                variant = name.partition("@")[2] or "value"
                key = name + KNOWN if known else name
                runs[key] = to_run(self.stack(name).order(rows, variant), depth)
                seconds[key] = round(time.perf_counter() - started, 2)
        order = [n for m in models for n in (m, m + KNOWN) if n in runs]  # each regime beside its model
        return {n: runs[n] for n in order}, {n: seconds[n] for n in order}

    def ranker(self, model: str, depth: int = 10) -> Ranker:
        """A simulator Ranker: raw query texts -> (n, depth) item ids in metrics.ranked order, EMPTY
        where the model returns fewer. The lists `runs` scores, cut at `depth` after ranking: cutting
        the channel's own top-k first would settle ties at the cut by the channel's order, not ours."""
        self.check([model])

        def rank(texts: Sequence[str]) -> np.ndarray:
            keys = [str(i) for i in range(len(texts))]
            run = self.runs([normalize_query(t) for t in texts], keys, [model], DEPTH)[0][model]
            out = np.full((len(texts), depth), EMPTY, dtype=object)
            for i, key in enumerate(keys):
                top = ranked(run.get(key, {}), depth)
                out[i, :len(top)] = top
            return out

        return rank
