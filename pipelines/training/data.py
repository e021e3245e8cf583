"""Training data: entity rows -> point-in-time set via the `training` FeatureService -> candidate lists.

The trainer reads feature VALUES only through Feast definitions (pipelines.features.dataset). To
choose its entity rows it reads the keys of two signal tables where the views point (`_pairs`:
retrieval_prior's pairs and fusion score, to keep each query's best candidates, and
teacher_labels' judged pairs, so judged items the channels missed are in the lists); entity rows
are (training query, candidate item, as_of), and the set comes back with lineage and a content hash
that the model's version records. Lists are then sampled per step: the target's best `top_share` of the list, the rest
drawn from the query's other candidates (hard negatives: every candidate was retrieved by a channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.features.dataset import build_dataset, file_sha256
from pipelines.features.repo import feature_store
from pipelines.signals.spec import table_path
from pipelines.training.config import DataConfig, TargetConfig
from pipelines.training.target import soft_target, utility
from pipelines.workspace import Workspace

KEYS = ["query_id", "item_id"]


def _pairs(ws: Workspace, view: str, columns: list[str]) -> pd.DataFrame:
    """Columns of a signal's table, read where its view points (keys for entity rows, not features)."""
    store = feature_store(ws)
    path = table_path(ws, store.get_feature_view(view))
    if not path.exists():
        raise FileNotFoundError(f"{path}: signal {view!r} not built; run `unisup signals build` first")
    return pq.read_table(path, columns=columns).to_pandas()


def entity_rows(ws: Workspace, as_of: pd.Timestamp, config: DataConfig, seed: int = 0) -> pd.DataFrame:
    """(query_id, item_id, event_timestamp=as_of) for the training queries' candidates.

    Per query, the `max_candidates` pairs the channels agree on most, plus all teacher-labelled
    judged pairs; `max_queries` (seeded) caps the queries for quick runs."""
    prior = _pairs(ws, "retrieval_prior", [*KEYS, "fusion_score"])
    prior = prior.sort_values("fusion_score", ascending=False).drop_duplicates(KEYS)
    prior = prior.groupby("query_id", sort=False).head(config.max_candidates)
    judged = _pairs(ws, "teacher_labels", [*KEYS, "human_grade"])
    judged = judged.loc[judged["human_grade"].notna(), KEYS].drop_duplicates()
    rows = pd.concat([prior[KEYS], judged], ignore_index=True).drop_duplicates(KEYS)
    queries = np.sort(rows["query_id"].unique())
    if config.max_queries is not None and len(queries) > config.max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(queries, config.max_queries, replace=False))
        rows = rows[rows["query_id"].isin(queries)]
    rows = rows.sort_values(KEYS).reset_index(drop=True)
    return rows.assign(event_timestamp=pd.Timestamp(as_of).tz_convert("UTC").as_unit("us"))


@dataclass(frozen=True)
class TrainingSet:
    frame: pd.DataFrame
    lineage: dict  # the dataset's lineage.json plus its sha256


def training_set(ws: Workspace, out_dir: Path, as_of: pd.Timestamp, config: DataConfig,
                 seed: int = 0) -> TrainingSet:
    """Build (or rebuild) the point-in-time training set in out_dir and return it with lineage."""
    result = build_dataset(ws, entity_rows(ws, as_of, config, seed), out_dir, service="training")
    lineage = {**result.lineage, "dataset_sha256": file_sha256(result.path), "dataset_path": str(result.path)}
    return TrainingSet(pd.read_parquet(result.path), lineage)


@dataclass
class CandidateLists:
    """Per training query: its text, candidate titles and soft-target utilities."""

    queries: list[str]
    titles: list[np.ndarray]
    utilities: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.queries)


def candidate_lists(df: pd.DataFrame, target: TargetConfig, min_candidates: int = 2) -> CandidateLists:
    """Group a training set into lists; rows without a title or query text are dropped (counted
    by the caller from the set's null rates), queries with fewer than min_candidates are skipped."""
    df = df.assign(_u=utility(df, target))
    df = df[df["title"].notna() & df["query_text"].notna()]
    lists = CandidateLists([], [], [])
    for _, group in df.groupby("query_id", sort=True):
        if len(group) < min_candidates:
            continue
        lists.queries.append(str(group["query_text"].iloc[0]))
        lists.titles.append(group["title"].astype(str).to_numpy())
        lists.utilities.append(group["_u"].to_numpy(dtype="float64"))
    return lists


@dataclass
class Batch:
    queries: list[str]  # B
    items: list[str]  # B * L, list b in slots [b*L, (b+1)*L)
    target: np.ndarray  # (B, L) soft target, 0 on padding
    mask: np.ndarray  # (B, L) True where a slot holds a candidate


def sample_batch(lists: CandidateLists, idx: np.ndarray, config: DataConfig, temperature: float,
                 rng: np.random.Generator) -> Batch:
    """One list per query: its best top_share by utility (ties at random), the rest sampled."""
    size = config.list_size
    n_top = max(1, round(size * config.top_share))
    queries, items = [], []
    target = np.zeros((len(idx), size))
    mask = np.zeros((len(idx), size), dtype=bool)
    for b, q in enumerate(idx):
        u = lists.utilities[q]
        order = np.lexsort((rng.random(len(u)), -u))  # best first, random among ties
        top, rest = order[:n_top], order[n_top:]
        picked = np.concatenate([top, rng.choice(rest, min(len(rest), size - len(top)), replace=False)])
        queries.append(lists.queries[q])
        titles = lists.titles[q][picked].tolist()
        items.extend(titles + [""] * (size - len(picked)))
        target[b, :len(picked)] = soft_target(u[picked], temperature)
        mask[b, :len(picked)] = True
    return Batch(queries, items, target, mask)
