"""Online feature reads for (query, item) pairs: one batched call for N pairs.

Entity rows carry both keys, so Feast resolves pair views on (query_id, item_id), item views on
item_id and query views on query_id inside the same call; on-demand views (the gate) run on the
fetched values through the same function as in training sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import pandas as pd

from pipelines.features.repo import feature_store
from pipelines.workspace import Workspace


class OnlineFeatures:
    """Reads a FeatureService's features for pairs from the workspace's online store."""

    def __init__(self, ws: Workspace, service: str = "retriever_online", engine: str = "auto"):
        """engine "auto" reads Redis (a server or a cluster) and SQLite through the fast readers
        (redis_reader, sqlite_fast); "feast" forces Feast's SDK."""
        if engine not in ("auto", "feast"):
            raise ValueError(f"engine {engine!r}: expected 'auto' or 'feast'")
        self.ws = ws
        self.store = feature_store(ws)
        self.service = self.store.get_feature_service(service)
        self.reader = None
        if engine == "auto" and ws.online_type == "redis":
            from pipelines.features.redis_fast import RedisFeatureReader

            self.reader = RedisFeatureReader(ws, service, store=self.store)
        elif engine == "auto" and ws.online_type == "sqlite":
            from pipelines.features.sqlite_fast import SqliteFeatureReader

            self.reader = SqliteFeatureReader(ws, service, store=self.store)

    @cached_property
    def views(self) -> frozenset[str]:
        """The batch views the service reads, directly or through its on-demand views: the views
        whose absence from the online store leaves this service's features null."""
        batch = {fv.name for fv in self.store.list_feature_views()}
        names = set()
        for projection in self.service.feature_view_projections:
            if projection.name in batch:
                names.add(projection.name)
            else:
                names |= set(self.store.get_on_demand_feature_view(projection.name).source_feature_view_projections)
        return frozenset(names & batch)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for p in self.service.feature_view_projections for f in p.features]

    def get_online_features(self, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """Features for each (query_id, item_id) pair, in input order; missing values are null."""
        if not pairs:
            return pd.DataFrame(columns=["query_id", "item_id", *self.feature_names])
        if self.reader is not None:
            return self.reader.read(pairs)
        return self._feast(pairs).to_df()

    def get_online_columns(self, pairs: Sequence[tuple[str, str]]) -> dict[str, list]:
        """The same values as plain Python lists per column (None where missing), without building a
        DataFrame: what a request handler serializes, ~1 ms cheaper per 100 pairs from Redis."""
        if not pairs:
            return {name: [] for name in ("query_id", "item_id", *self.feature_names)}
        if self.reader is not None:
            return self.reader.read_columns(pairs)
        return self._feast(pairs).to_dict()

    def _feast(self, pairs: Sequence[tuple[str, str]]):
        rows = [{"query_id": q, "item_id": i} for q, i in pairs]
        return self.store.get_online_features(features=self.service, entity_rows=rows)
