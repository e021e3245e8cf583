"""Fit the blend's weights (blend.py) from a point-in-time set of the `retriever_online` service.

Rows: every human judgment of a training-split query whose item is in the index (dev queries are
only evaluated on, never fitted on). Each row's features come from the FeatureService the service
reads online, joined point-in-time at the judgment's own timestamp (or `as_of`) by the same
engine as training sets (features.dataset.build_dataset; each set and its lineage.json are kept in
<index>/blend_set/<split>/). The model score is the cosine between the normalized query's
embedding and the item's vector in the index, exactly what /retrieve computes. Label:
relevance >= 2.

Logistic regression (scikit-learn, L2, C=1) on the standardized inputs. AUC is reported in-sample
and on the dev split, each beside the model score's own AUC. Caveat: the teacher's labels for
training queries were fitted on these same judgments, so its features look stronger here than
they are for a new query (which has no teacher label at all and is then scored by the rest).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureService, FeatureStore
from feast.errors import FeatureServiceNotFoundException
from sklearn.linear_model import LogisticRegression

from pipelines.features.dataset import build_dataset, definitions_hash
from pipelines.features.repo import feature_store
from pipelines.index.blend import MODEL_SCORE, Blend, fit_transform, raw_inputs, standardize
from pipelines.index.store import LoadedIndex, load_encoder, load_index
from pipelines.metrics import query_auc
from pipelines.modeling.encoder import Encoder
from pipelines.workspace import Workspace

RELEVANT = 2.0  # human relevance 1..3 at or above which a pair counts as relevant (DESIGN)
C = 1.0  # inverse L2 strength on standardized inputs
_NUMERIC = ("INT32", "INT64", "FLOAT", "DOUBLE", "BOOL")


class BlendError(ValueError):
    """The blend cannot be fitted from this workspace; the message says why."""


def numeric_features(service: FeatureService) -> list[str]:
    """The service's features declared with a numeric type, in service order (titles are not)."""
    return [f.name for p in service.feature_view_projections for f in p.features
            if f.dtype.to_value_type().name in _NUMERIC]


def pair_features(store: FeatureStore, service: FeatureService) -> set[str]:
    """Features that exist only for known (query, item) pairs: those of views keyed by both, and
    on-demand outputs computed from such views. A query never seen has none of them."""
    pair_views = {v.name for v in store.list_feature_views() if {"query_id", "item_id"} <= set(v.join_keys)}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
    out = set()
    for proj in service.feature_view_projections:
        odfv = odfvs.get(proj.name)
        sources = {s.name for s in odfv.source_feature_view_projections.values()} if odfv else {proj.name}
        if sources & pair_views:
            out.update(f.name for f in proj.features)
    return out


def judged_rows(ws: Workspace, loaded: LoadedIndex, split: str, as_of: pd.Timestamp | None) -> pd.DataFrame:
    """Judgments of `split` queries on indexed items, with query_norm, FAISS row and label."""
    queries = ws.lake.read("queries")[["query_id", "query_norm", "split"]]
    judged = ws.lake.read("judgments").merge(queries, on="query_id")
    rows = pd.Series(np.arange(len(loaded.item_ids)), index=loaded.item_ids)
    judged = judged[(judged["split"] == split) & judged["item_id"].isin(rows.index)].reset_index(drop=True)
    if as_of is not None:
        judged["event_timestamp"] = pd.Timestamp(as_of)
    judged["row"] = rows.loc[judged["item_id"]].to_numpy()
    judged["label"] = (judged["relevance"] >= RELEVANT).astype(int)
    return judged


def model_scores(encoder: Encoder, loaded: LoadedIndex, rows: pd.DataFrame) -> np.ndarray:
    """Cosine of each row's normalized query and its item's vector in the index."""
    texts = rows["query_norm"].drop_duplicates().tolist()
    vectors = dict(zip(texts, encoder.encode(texts)))
    items = loaded.index.reconstruct_batch(rows["row"].to_numpy(dtype=np.int64))
    queries = np.stack([vectors[t] for t in rows["query_norm"]])
    return np.einsum("ij,ij->i", queries, items).astype(np.float64)


def rounded_query_auc(queries: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float | None:
    """metrics.query_auc to four decimals, as blend.json records it."""
    auc = query_auc(queries, labels, scores)
    return None if auc is None else round(auc, 4)


def fit_blend(ws: Workspace, index_dir: Path, as_of: pd.Timestamp | None = None) -> Blend:
    """Fit the blend for the index in `index_dir` and write blend.json next to it."""
    loaded = load_index(index_dir)
    store = feature_store(ws)
    try:
        service = store.get_feature_service(loaded.manifest.feature_service)
    except FeatureServiceNotFoundException as exc:
        raise BlendError(f"{exc}: run `unisup apply` (or build the index with --no-blend)") from None
    encoder = load_encoder(loaded.manifest, ws.models_dir)
    inputs = (MODEL_SCORE, *numeric_features(service))
    sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in ("train", "dev"):
        rows = judged_rows(ws, loaded, split, as_of)
        if rows.empty:
            continue
        entities = rows[["query_id", "item_id", "event_timestamp"]]
        frame = pd.read_parquet(build_dataset(ws, entities, loaded.path / "blend_set" / split,
                                              service=service.name).path)
        raw = raw_inputs(inputs, model_scores(encoder, loaded, rows), frame)
        sets[split] = raw, rows["label"].to_numpy(), rows["query_id"].to_numpy()
    if "train" not in sets or len(set(sets["train"][1])) < 2:
        raise BlendError(f"the training split needs judged pairs of both classes (relevance >= {RELEVANT} "
                         "and below) on indexed items to fit the blend")
    raw, labels, _ = sets["train"]
    cold = raw.copy()  # each row again as a query never seen would look: no pair features
    cold[:, [j for j, name in enumerate(inputs) if name in pair_features(store, service)]] = np.nan
    raw_fit, labels_fit = np.vstack([raw, cold]), np.concatenate([labels, labels])
    log1p, mean, scale = fit_transform(inputs, raw_fit)
    model = LogisticRegression(C=C, max_iter=1000).fit(standardize(raw_fit, log1p, mean, scale), labels_fit)
    weights = tuple(float(w) for w in model.coef_[0])
    if weights[0] <= 0:
        raise BlendError(f"the model score got weight {weights[0]:.4f} <= 0: the blend would reverse the "
                         "index's order for items without features; check the model and the judgments")
    blend = Blend(inputs, tuple(log1p), tuple(mean), tuple(scale), weights, float(model.intercept_[0]))
    fitted = {"feature_service": service.name, "definitions_sha256": definitions_hash(store, service),
              "index_version": loaded.manifest.index_version, "label": f"relevance >= {RELEVANT}",
              "as_of": str(as_of) if as_of is not None else "judgment time", "C": C,
              "created": pd.Timestamp.now(tz="UTC").isoformat()}
    for split, (split_raw, split_labels, split_queries) in sets.items():
        fitted[f"{split}_rows"], fitted[f"{split}_positives"] = len(split_labels), int(split_labels.sum())
        fitted[f"{split}_query_auc"] = rounded_query_auc(split_queries, split_labels, blend.logits_raw(split_raw))
        fitted[f"{split}_query_auc_model_score"] = rounded_query_auc(split_queries, split_labels, split_raw[:, 0])
    blend = replace(blend, fitted=fitted)
    blend.save(loaded.path)
    return blend
