"""The known-query regime for queries the producers have not seen (`unisup eval --precompute`).

In production head and torso queries have pair rows in the store: the producers ran their inference
on them. Every dev or withheld query is new to the store, so to measure that regime this runs the
same inference for a file's queries, with the models the last `signals build` fitted on training
data (the retrieval channels, the teacher cascade saved in WORKSPACE/cache/teacher with its
calibrators and threshold), never reading the file's judgments:

- retrieval_prior: each channel's top 100 (BM25, MiniLM, character n-grams) fused, as the producer;
- teacher_labels: the cascade's calibrated grades for every candidate of the prior, stage 2 on the
  least confident pairs up to the producer's cap (the latest release, "teacher-v2").

Engagement stays unknown: these queries have no traffic. The rows are handed to the search stack in
place of the store's (null) pair features; nothing is written to the store.
"""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from pipelines.metrics import DEPTH
from pipelines.retrieval import build_channels, search_all
from pipelines.retrieval.fusion import prior_table
from pipelines.retrieval.pair_features import PairScorer
from pipelines.signals.teacher_labels import grade_columns
from pipelines.teacher.cascade import Teacher
from pipelines.workspace import Workspace


def precompute_pair_features(ws: Workspace, query_norms: list[str], query_ids: list[str],
                             console: Console | None = None) -> pd.DataFrame:
    """query_id, item_id and the retrieval prior's and the teacher's features of the queries' candidates."""
    console = console or Console(stderr=True)
    teacher_dir = ws.cache_dir / "teacher"
    if not (teacher_dir / "teacher.json").exists():
        raise FileNotFoundError(f"no fitted teacher in {teacher_dir}: run `unisup signals build` first")
    teacher = Teacher.load(teacher_dir)
    items = ws.lake.read("items")
    channels = build_channels(items, cache_dir=ws.cache_dir / "retrieval")
    hits, _ = search_all(channels, query_norms, k=DEPTH)
    prior = prior_table(hits, query_ids)
    prior["query_norm"] = prior["query_id"].map(dict(zip(query_ids, query_norms)))
    max_pairs = (teacher.meta.get("cascade") or {}).get("max_pairs")
    console.print(f"precompute: teacher on {len(prior):,} candidate pairs of {len(query_ids):,} queries "
                  f"(stage 2 on at most {max_pairs or 'all'} pairs)")
    labels = teacher.label(prior, PairScorer(channels, items), max_pairs=max_pairs)
    grades = pd.DataFrame(grade_columns(labels["probs2"]), index=prior.index)
    return pd.concat([prior.drop(columns="query_norm"), grades], axis=1)
