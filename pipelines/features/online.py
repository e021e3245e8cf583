"""Online feature reads for (query, item) pairs, and the other entities a service keys on: one
batched call for N rows.

Entity rows carry every key of the service (`OnlineFeatures.keys`: query_id, item_id, then e.g.
brand and user_id), so Feast resolves pair views on (query_id, item_id), item views on item_id,
query views on query_id, user views on user_id and (user, brand) views on (brand, user_id) inside
the same call; on-demand views (the gate) run on the fetched values through the same function as
in training sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import pandas as pd

from pipelines.features.repo import feature_store
from pipelines.features.service_reader import answered_keys, service_keys
from pipelines.workspace import Workspace


class OnlineFeatures:
    """Reads a FeatureService's features for entity rows from the workspace's online store.

    A row is a tuple in `keys` order: (query_id, item_id) for a service of pair, item and query
    views; (query_id, item_id, brand, user_id) for one that also reads user and (user, brand) views."""

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

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """The fields of an entity row, in order: query_id, item_id, then the service's other join
        keys sorted by name (service_reader.service_keys)."""
        if self.reader is not None:
            return self.reader.keys
        return service_keys(self.store.get_feature_view(name) for name in sorted(self.views))

    @cached_property
    def entity_columns(self) -> tuple[str, ...]:
        """The entity columns an answer starts with, in `keys` order: all of `keys` when the repo
        declares the query and item entities (service_reader.answered_keys)."""
        if self.reader is not None:
            return self.reader.entity_columns
        return answered_keys(self.store, self.keys)

    def entity_rows(self, **columns) -> list[tuple]:
        """Entity rows in `keys` order from one value per key: a sequence (one per row) or one string
        for every row. A key not given is "" in every row, an entity no store holds, so its features
        read null (an anonymous request leaves out user_id and brand); a key the service does not
        read is dropped."""
        n = next(len(v) for v in columns.values() if not isinstance(v, str))
        per_key = (columns.get(k, "") for k in self.keys)
        return list(zip(*([v] * n if isinstance(v, str) else v for v in per_key)))

    @property
    def feature_names(self) -> list[str]:
        return [f.name for p in self.service.feature_view_projections for f in p.features]

    def get_online_features(self, rows: Sequence[tuple]) -> pd.DataFrame:
        """Features for each entity row (a tuple in `keys` order, e.g. a (query_id, item_id) pair),
        in input order; missing values, and every feature of an entity the store lacks, are null."""
        if not rows:
            return pd.DataFrame(columns=[*self.entity_columns, *self.feature_names])
        if self.reader is not None:
            return self.reader.read(rows)
        return self._feast(rows).to_df()

    def get_online_columns(self, rows: Sequence[tuple]) -> dict[str, list]:
        """The same values as plain Python lists per column (None where missing), without building a
        DataFrame: what a request handler serializes, ~1 ms cheaper per 100 pairs from Redis."""
        if not rows:
            return {name: [] for name in (*self.entity_columns, *self.feature_names)}
        if self.reader is not None:
            return self.reader.read_columns(rows)
        return self._feast(rows).to_dict()

    def _feast(self, rows: Sequence[tuple]):
        keys = self.keys
        entity_rows = [dict(zip(keys, row, strict=True)) for row in rows]
        return self.store.get_online_features(features=self.service, entity_rows=entity_rows)
