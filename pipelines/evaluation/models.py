"""Every model name `unisup eval` and `unisup ab` accept, behind one `runs` call.

- retrieval models (pipelines.retrieval.runner.ModelRunner): bm25, char, rrf, rrf:VERSION, an
  encoder version;
- "search:RANKER": the full search stack of a trained ranker (pipelines.ranking.search): its
  candidate model's top N, the ranker_online features in one lookup, the ranker, the value model;
  exactly what /search serves.

Runs are what metrics.evaluate reads ({query_id: {item_id: score}}); `ranker` turns a model into the
click simulator's Ranker (raw query texts -> item ids per slot).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.metrics import DEPTH, ranked
from pipelines.retrieval.runner import ModelRunner, Run
from pipelines.simulation import EMPTY, Ranker
from pipelines.text import normalize_query
from pipelines.workspace import Workspace

SEARCH = "search:"


class Models:
    """Runs of any model name over one workspace's catalog; each model loaded on first use."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.runner = ModelRunner(ws.lake.read("items"), ws.models_dir, ws.cache_dir / "retrieval")
        self._stacks: dict = {}

    def stack(self, model: str):
        """The search stack behind "search:RANKER" (pipelines.ranking.search.SearchStack)."""
        if model not in self._stacks:
            from pipelines.ranking.search import SearchStack

            self._stacks[model] = SearchStack.load(self.ws, model.removeprefix(SEARCH), runner=self.runner)
        return self._stacks[model]

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
        for name in models:
            if name.startswith(SEARCH):
                runs[name], seconds[name] = self.stack(name).runs(texts, query_ids, depth)
        return {m: runs[m] for m in models}, {m: seconds[m] for m in models}

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
