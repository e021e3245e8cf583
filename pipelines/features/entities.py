"""Entity rows for point-in-time sets: which (query, item) pairs, at which moments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.features.repo import feature_store
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace


def sample_entities(ws: Workspace, n: int, seed: int = 0, days: int = 30,
                    end: pd.Timestamp | None = None, view: str = "teacher_labels") -> pd.DataFrame:
    """n rows: pairs drawn from a pair view's table, event times uniform over `days` before `end`.

    Spreading event times over a window is what makes the set point-in-time: rows early in the
    window see older signal versions (or none) and late rows the newest."""
    store = feature_store(ws)
    path = table_path(ws, store.get_feature_view(view))
    pairs = pq.read_table(path, columns=["query_id", "item_id"]).to_pandas().drop_duplicates()
    rng = np.random.default_rng(seed)
    pick = pairs.iloc[rng.integers(0, len(pairs), size=n)].reset_index(drop=True)
    end = end if end is not None else pd.Timestamp.now(tz="UTC").floor("s")
    offsets = pd.to_timedelta(rng.uniform(0, days * 86400, size=n).round(), unit="s")
    return pick.assign(event_timestamp=(end - offsets).astype("datetime64[us, UTC]"))
