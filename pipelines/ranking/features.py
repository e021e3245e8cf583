"""The ranker's input: request-time pair features beside the `ranking` / `ranker_online` store features.

Two sources, one assembly (`pair_features` + `FeatureSpec.matrix`) used by training, eval and /search:
- request-time: pipelines.retrieval.pair_features over the candidate model's own channels (rrf:VERSION:
  BM25, the trained bi-encoder, character n-grams), named "request_<feature>". Computed by a shared
  module rather than an on-demand view: the features need the catalog-wide channels (BM25 over all
  titles, the query's best cosine), which an on-demand view, a function of the fetched row, cannot
  reach; the candidate stage has already searched them, so they cost ~nothing more at serving.
- store: the FeatureService's features, read point-in-time for training sets and online at serving;
  null where the store has no row (every pair of a new query), and kept null: `matrix` turns each
  into a value plus, per view, an "is known" indicator, so "unknown" never reads as 0 = "irrelevant".

Known and new queries: a view keyed by the query (pair views, query views) holds rows only for the
queries the producers have seen. `QUERY_KEYED` views are blanked for a share of training queries
(`drop_query_features`), so the model learns to rank both with and without them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore

from pipelines.retrieval.pair_features import FEATURES, PRIOR, PairScorer

REQUEST = [f"request_{name}" for name in FEATURES]


def pair_features(scorer: PairScorer, candidates: pd.DataFrame) -> pd.DataFrame:
    """REQUEST columns for candidate rows (query_id, item_id, query_norm[, the fusion's columns])."""
    return scorer.features(candidates).add_prefix("request_").set_axis(candidates.index)


def assemble(rows: pd.DataFrame, request: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """One frame of the ranker's inputs: the rows without the fusion's own columns (they live on as
    request_rank_* / request_fusion_score / request_agreement, and the store has columns of the same
    names from the retrieval prior), the request-time features, the store features."""
    own = [c for c in PRIOR if c in rows.columns]
    return pd.concat([rows.drop(columns=own), request, stored.set_axis(rows.index)], axis=1)


def store_views(store: FeatureStore, service: FeatureService) -> dict[str, tuple[list[str], bool]]:
    """view name -> (its features in the service, whether the view is keyed by the query).

    On-demand views count as query-keyed: ours derive from pair views."""
    on_demand = {view.name for view in store.list_on_demand_feature_views()}
    out = {}
    for projection in service.feature_view_projections:
        keyed = projection.name in on_demand or "query_id" in store.get_feature_view(projection.name).join_keys
        out[projection.name] = ([f.name for f in projection.features], keyed)
    return out


@dataclass
class FeatureSpec:
    """Which columns the ranker reads and how they become its input matrix; saved with the model.

    Transform per column: x -> sign(x) log(1 + |x|) (counts, BM25 scores and ranks are heavy-tailed),
    then standardised with the training rows' mean and std over known values; unknown -> 0 (the mean)
    plus the view's "is known" indicator. LambdaMART reads `raw` instead: trees take nulls natively."""

    request: list[str]
    views: dict[str, tuple[list[str], bool]]
    mean: dict[str, float]
    std: dict[str, float]

    @property
    def store(self) -> list[str]:
        return [name for names, _ in self.views.values() for name in names]

    @property
    def query_keyed(self) -> list[str]:
        return [name for names, keyed in self.views.values() if keyed for name in names]

    @property
    def columns(self) -> list[str]:
        return self.request + self.store

    @property
    def inputs(self) -> list[str]:
        """Names of the matrix's columns: every feature, then one indicator per view."""
        return self.columns + [f"known_{view}" for view in self.views]

    @classmethod
    def fit(cls, rows: pd.DataFrame, views: dict[str, tuple[list[str], bool]],
            request: list[str] = REQUEST) -> FeatureSpec:
        """Means and stds of the training rows; `request`: the columns computed per request (the
        ranker's pair features; the light pre-ranker's retrieval columns with no views)."""
        spec = cls(request=list(request), views=views, mean={}, std={})
        squashed = _squash(rows[spec.columns])
        spec.mean = {c: float(np.nan_to_num(np.nanmean(squashed[c]))) if squashed[c].notna().any() else 0.0
                     for c in spec.columns}
        spec.std = {c: float(np.nanstd(squashed[c])) if squashed[c].notna().sum() > 1 else 1.0
                    for c in spec.columns}
        spec.std = {c: s if s > 1e-6 else 1.0 for c, s in spec.std.items()}
        return spec

    def raw(self, rows: pd.DataFrame) -> np.ndarray:
        """(n, len(columns)) float32 with NaN for unknown: what the tree baseline reads."""
        return rows.reindex(columns=self.columns).apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)

    def matrix(self, rows: pd.DataFrame) -> np.ndarray:
        """(n, len(inputs)) float32: the network's input."""
        squashed = _squash(rows.reindex(columns=self.columns))
        mean = np.array([self.mean[c] for c in self.columns], np.float32)
        std = np.array([self.std[c] for c in self.columns], np.float32)
        values = (squashed.to_numpy(np.float32) - mean) / std
        known = np.stack([rows.reindex(columns=names).notna().any(axis=1).to_numpy() for names, _ in
                          self.views.values()], axis=1) if self.views else np.zeros((len(rows), 0), bool)
        return np.concatenate([np.nan_to_num(values, nan=0.0), known.astype(np.float32)], axis=1)

    def to_dict(self) -> dict:
        return {k: ({n: list(v) for n, v in val.items()} if k == "views" else val) for k, val in asdict(self).items()}

    @classmethod
    def from_dict(cls, blob: dict) -> FeatureSpec:
        return cls(request=blob["request"], views={n: (list(v[0]), bool(v[1])) for n, v in blob["views"].items()},
                   mean=blob["mean"], std=blob["std"])


def drop_query_features(rows: pd.DataFrame, spec: FeatureSpec, share: float, seed: int) -> pd.DataFrame:
    """A copy with every query-keyed store feature blanked for `share` of the queries (seeded): the
    new-query regime, so the model does not collapse when a query arrives with no pair rows."""
    queries = rows["query_id"].drop_duplicates()
    dropped = queries.sample(frac=share, random_state=seed)
    out = rows.copy()
    out.loc[out["query_id"].isin(dropped), spec.query_keyed] = np.nan
    return out


def _squash(frame: pd.DataFrame) -> pd.DataFrame:
    numeric = all(pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in frame.dtypes)
    values = (frame.astype(np.float64) if numeric  # the common case, without a per-column apply
              else frame.apply(pd.to_numeric, errors="coerce").astype(np.float64))
    return np.sign(values) * np.log1p(values.abs())
