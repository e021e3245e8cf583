"""Does the online store hold what the offline store says is current?

Samples keys from the pair tables, reads their features from the offline store as of now
(point-in-time, TTL applied) and from the online store, and lists every feature that differs.
A mismatch means materialization is stale or a write path diverged from Feast's format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.features.dataset import feast_historical
from pipelines.features.online import OnlineFeatures
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace


@dataclass(frozen=True)
class ConsistencyReport:
    keys: int
    features: list[str]
    mismatches: pd.DataFrame  # query_id, item_id, feature, offline, online

    @property
    def ok(self) -> bool:
        return self.mismatches.empty


def sample_pairs(client: OnlineFeatures, n: int, seed: int) -> pd.DataFrame:
    """Up to n distinct (query_id, item_id) keys drawn from every pair view's table."""
    batch = {fv.name: fv for fv in client.store.list_feature_views()}  # on-demand views have no table
    keys = []
    for proj in client.service.feature_view_projections:
        view = batch.get(proj.name)
        if view is not None and {"query_id", "item_id"} <= set(view.join_keys):
            path = table_path(client.ws, view)
            keys.append(pq.read_table(path, columns=["query_id", "item_id"]).to_pandas())
    pool = pd.concat(keys, ignore_index=True).drop_duplicates(ignore_index=True)
    return pool.sample(n=min(n, len(pool)), random_state=seed).reset_index(drop=True)


def _equal(a: pd.Series, b: pd.Series) -> np.ndarray:
    both_null = a.isna().to_numpy() & b.isna().to_numpy()
    try:
        close = np.isclose(a.astype("float64"), b.astype("float64"), rtol=1e-6, atol=1e-7)
    except (TypeError, ValueError):
        close = (a.astype(str) == b.astype(str)).to_numpy()
    return both_null | close


def check_consistency(ws: Workspace, n: int = 1000, seed: int = 0,
                      service: str = "training") -> ConsistencyReport:
    """Compare offline (as of now) and online values of `service` for n sampled pairs."""
    client = OnlineFeatures(ws, service=service)
    pairs = sample_pairs(client, n, seed)
    now = pd.Timestamp(datetime.now(UTC)).floor("us")
    offline = feast_historical(client.store, client.service, pairs.assign(event_timestamp=now))
    online = client.get_online_features(list(pairs.itertuples(index=False, name=None)))
    rows = []
    for feature in client.feature_names:
        same = _equal(offline[feature], online[feature])
        for i in np.flatnonzero(~same):
            rows.append((pairs.at[i, "query_id"], pairs.at[i, "item_id"], feature,
                         offline.at[i, feature], online.at[i, feature]))
    mismatches = pd.DataFrame(rows, columns=["query_id", "item_id", "feature", "offline", "online"])
    return ConsistencyReport(keys=len(pairs), features=client.feature_names, mismatches=mismatches)
