"""Runs of named retrieval models over the whole catalog, for evaluation and for the A/B replay.

A model name is one of
- "bm25" or "char": the lexical channels of pipelines.retrieval;
- "rrf": reciprocal-rank fusion of bm25, char and the off-the-shelf MiniLM (the retrieval prior's
  own ranking, pipelines.retrieval.fusion); "rrf:VERSION" fuses bm25 and char with that encoder
  version instead (a hybrid of the lexical channels and a trained student);
- any encoder version pipelines.modeling.registry resolves (BASE_VERSION or a trained model under
  workspace/models/), searched by the dense channel. Catalog embeddings are cached by encoder
  fingerprint + catalog hash in cache_dir, the same cache the retrieval prior fills, so a catalog is
  encoded once per model.
Each channel is built once and searched once per query set, however many requested models share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.metrics import DEPTH
from pipelines.modeling.registry import BASE_VERSION, resolve
from pipelines.retrieval import Channel, Hits, search_all, shared_encoder
from pipelines.retrieval.fusion import fused_run, prior_table
from pipelines.retrieval.report import hits_run

RRF = "rrf"
LEXICAL = ("bm25", "char")


def fused_channels(name: str) -> dict[str, str] | None:
    """The prior's channel -> model name behind a fused model name ("rrf", "rrf:VERSION"), else None."""
    if name != RRF and not name.startswith(RRF + ":"):
        return None
    dense = name.partition(":")[2] or BASE_VERSION
    return {"bm25": "bm25", "dense": dense, "char": "char"}

Run = dict[str, dict[str, float]]  # {query_id: {item_id: score}}, what metrics.evaluate reads


class ModelRunner:
    """Channels for a set of model names over one catalog, each built on first use."""

    def __init__(self, items: pd.DataFrame, models_dir: Path, cache_dir: Path | None = None):
        self.item_ids = items["item_id"].astype(str).to_numpy()
        self.titles = items["title"].astype(str).tolist()
        self.models_dir = Path(models_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._channels: dict[str, Channel] = {}

    def check(self, models: Sequence[str]) -> None:
        """Fail before any work on a name that is no model (UnknownModel lists the available ones)."""
        for name in models:
            dense = (fused_channels(name) or {}).get("dense", name)
            if dense not in LEXICAL:
                resolve(self.models_dir, dense)

    def channel(self, name: str) -> Channel:
        """The channel behind one non-fused model name, built once per ModelRunner."""
        if name not in self._channels:
            from pipelines.retrieval.bm25 import BM25Channel
            from pipelines.retrieval.chars import CharChannel
            from pipelines.retrieval.dense import DenseChannel

            if name == "bm25":
                self._channels[name] = BM25Channel.build(self.item_ids, self.titles)
            elif name == "char":
                self._channels[name] = CharChannel.build(self.item_ids, self.titles)
            else:
                encoder = shared_encoder(resolve(self.models_dir, name).path)
                self._channels[name] = DenseChannel.build(self.item_ids, self.titles, encoder, self.cache_dir)
        return self._channels[name]

    def fused_channels(self, model: str) -> dict[str, Channel]:
        """The prior's channel -> channel behind a fused model name; ValueError for any other name."""
        parts = fused_channels(model)
        if parts is None:
            raise ValueError(f"{model!r} is no fused model (rrf or rrf:VERSION)")
        self.check([model])
        return {c: self.channel(n) for c, n in parts.items()}

    def candidates(self, texts: Sequence[str], query_ids: Sequence[str], model: str, n: int,
                   progress: bool = True) -> pd.DataFrame:
        """The ranking stage's candidates: a fused model's top n per query (fewer where the channels'
        top-100 lists hold fewer items) with the prior's columns (rank_<channel>, fusion_score,
        agreement), sorted by query then fusion_score. One function for training, eval and serving."""
        hits, _ = search_all(self.fused_channels(model), list(texts), k=DEPTH, progress=progress)
        return prior_table(hits, list(query_ids)).groupby("query_id", sort=False).head(n).reset_index(drop=True)

    def runs(self, texts: Sequence[str], query_ids: Sequence[str], models: Sequence[str],
             depth: int = DEPTH) -> tuple[dict[str, Run], dict[str, float]]:
        """Top-`depth` run of every model for the queries, and search seconds per model.

        A fused model always fuses each channel's top DEPTH (the prior's definition), whatever `depth` is."""
        self.check(models)
        fused = {m: parts for m in models if (parts := fused_channels(m)) is not None}
        needed = list(dict.fromkeys([m for m in models if m not in fused]
                                    + [n for parts in fused.values() for n in parts.values()]))
        hits, seconds = search_all({m: self.channel(m) for m in needed}, list(texts), k=DEPTH if fused else depth)
        qids = list(query_ids)
        runs = {m: hits_run(qids, *_cut(hits[m], depth)) for m in models if m not in fused}
        for m, parts in fused.items():
            runs[m] = fused_run(prior_table({c: hits[n] for c, n in parts.items()}, qids), depth)
            seconds[m] = sum(seconds[n] for n in parts.values())
        return {m: runs[m] for m in models}, {m: round(seconds[m], 2) for m in models}


def _cut(hits: Hits, depth: int) -> Hits:
    ids, scores = hits
    return ids[:, :depth], scores[:, :depth]
