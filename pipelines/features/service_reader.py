"""get_online_features for (query, item) pairs, and any other entities a service keys on (a user,
a (user, brand)), read straight from an online store's own layout.

A service's entity rows are tuples in `ServiceReader.keys` order: query_id, item_id, then the
other join keys of its views, sorted by name (a pair-only service: (query_id, item_id) pairs).
Every entity is read in the same batched lookup.

What every fast reader shares (redis_reader for Redis, sqlite_fast for SQLite): which stored
features a FeatureService needs, per view; the service's on-demand views run through their
registered udf on the frame Feast builds; the answer assembled in Feast's column order. A reader
only says how to fetch the stored values (`_fetch`). Like Feast's online read, no TTL is applied:
stored values come back however old.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.feature_view import DUMMY_ENTITY_ID
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from pipelines.features import redis_wire as wire
from pipelines.features.repo import feature_store
from pipelines.workspace import Workspace

PAIR_KEYS = ("query_id", "item_id")  # every entity row starts with these (ServiceReader.keys)


@lru_cache(maxsize=1 << 16)
def encoded_id(value: str) -> bytes:
    """serialize_entity_key's bytes for one string value: type tag, length, UTF-8."""
    raw = value.encode()
    return len(raw).to_bytes(4, "little").join([b"\x02\x00\x00\x00", raw])


def encoded_int64(value: int) -> bytes:
    """serialize_entity_key's bytes for one INT64 value: type tag, length 8, little-endian."""
    return b"\x04\x00\x00\x00\x08\x00\x00\x00" + struct.pack("<q", value)


KEY_ENCODERS: dict[ValueType, Callable[[object], bytes]] = {ValueType.STRING: encoded_id,
                                                            ValueType.INT64: encoded_int64}


@dataclass(frozen=True)
class EntityGroup:
    """The views a service reads whose rows share one stored entity key (the same join keys: the
    pair views; items; queries), so a reader fetches each distinct entity of a group once."""

    join_keys: tuple[str, ...]  # sorted, as serialize_entity_key orders them
    prefix: bytes  # the serialized entity key's bytes before the values (wire.entity_key_prefix)
    positions: tuple[int, ...]  # where each join key's value sits in an entity row (ServiceReader.keys)
    views: dict[str, dict[str, object]]  # view -> {feature: value type} to read, in the service's order
    encoders: tuple[Callable[[object], bytes], ...]  # per join key: its value's serialized bytes

    @property
    def strings(self) -> bool:
        """Every join key is a string (encoded_id serializes all its values)."""
        return all(e is encoded_id for e in self.encoders)


class ServiceReader:
    """Feast's `get_online_features(features=service, ...)` for entity rows, tuples in `keys` order.

    Equal to `store.get_online_features(features=service, entity_rows=[dict(zip(keys, row)) ...])
    .to_df()` in columns, values and dtypes (column order: the entity columns in `keys` order,
    then the service's features in service order; Feast's own order inside a view follows set
    iteration and varies with PYTHONHASHSEED). An entity the store does not hold (an unknown user)
    reads as nulls. On-demand views run through their registered transform."""

    def __init__(self, ws: Workspace, service_name: str = "retriever_online",
                 store: FeatureStore | None = None):
        self.store = store or feature_store(ws)
        self.project = self.store.project
        service = self.store.get_feature_service(service_name)
        if getattr(service, "precompute_online", False):
            raise NotImplementedError("precompute_online services are read by Feast only")
        batch = {fv.name: fv for fv in self.store.list_feature_views()}
        self.outputs: list[str] = []
        self.odfvs: list[tuple[object, list[str], set[str]]] = []
        fetch: dict[str, dict[str, object]] = {}
        for proj in service.feature_view_projections:
            names = [f.name for f in proj.features]
            if proj.name in batch:
                self._want(fetch, batch[proj.name], names, proj)
                self.outputs += names
                continue
            odfv = self.store.get_on_demand_feature_view(proj.name)
            if odfv.write_to_online_store:
                raise NotImplementedError(f"on-demand view {odfv.name!r} is stored online; use Feast")
            for src in odfv.source_feature_view_projections.values():
                self._want(fetch, batch[src.name], [f.name for f in src.features], src)
            self.odfvs.append((odfv, names, {s.name for s in odfv.source_feature_view_projections.values()}))
            self.outputs += names
        self.fetch, self.views = fetch, batch  # view -> {feature: value type} to read; every batch view
        self.keys: tuple[str, ...] = service_keys(batch[name] for name in fetch)
        self.entity_columns: tuple[str, ...] = answered_keys(self.store, self.keys)
        self._entity_positions = tuple((k, self.keys.index(k)) for k in self.entity_columns)
        self.entity_groups = self._group(fetch, batch, self.keys)

    @staticmethod
    def _group(fetch: dict, batch: dict, keys: tuple[str, ...]) -> list[EntityGroup]:
        """The views to read grouped by their sorted join keys, groups and views in `fetch` order."""
        views: dict[tuple[str, ...], dict] = {}
        types: dict[str, ValueType] = {}
        for name, wanted in fetch.items():
            views.setdefault(tuple(sorted(batch[name].join_keys)), {})[name] = wanted
            types.update({c.name: c.dtype.to_value_type() for c in batch[name].entity_columns})
        for key, vt in types.items():
            if vt not in KEY_ENCODERS:
                raise NotImplementedError(f"join key {key!r}: value type {vt.name} (string and int64 keys only)")
        return [EntityGroup(join_keys, wire.entity_key_prefix(list(join_keys)),
                            tuple(keys.index(k) for k in join_keys), group,
                            tuple(KEY_ENCODERS[types[k]] for k in join_keys))
                for join_keys, group in views.items()]

    @staticmethod
    def _want(fetch: dict, view: FeatureView, names: list[str], projection) -> None:
        if not view.join_keys or DUMMY_ENTITY_ID in view.join_keys:
            raise NotImplementedError(f"view {view.name!r} has no entity; use Feast")
        if projection.join_key_map:
            raise NotImplementedError(f"view {view.name!r}: join keys mapped {projection.join_key_map}; use Feast")
        types = {f.name: f.dtype.to_value_type() for f in view.features}
        fetch.setdefault(view.name, {}).update({n: types[n] for n in names})

    def _fetch(self, rows: Sequence[tuple]) -> dict[tuple[str, str], list]:
        """(view, feature) -> the stored value for each entity row (None where the store has none)."""
        raise NotImplementedError

    def read_columns(self, rows: Sequence[tuple]) -> dict[str, list]:
        """Feast's `to_dict()` for these entity rows (tuples in `keys` order): entity columns, then
        features, then on-demand ones."""
        if rows and len(rows[0]) != len(self.keys):  # a pair for a service that reads users too
            raise ValueError(f"entity rows are tuples of {self.keys}; got {rows[0]!r}")
        return self._assemble(rows, self._fetch(rows))

    def _assemble(self, rows: Sequence[tuple], values: dict) -> dict[str, list]:
        out: dict[str, list] = {k: [r[p] for r in rows] for k, p in self._entity_positions}
        by_name = {feat: col for (view, feat), col in values.items()}
        for odfv, names, sources in self.odfvs:
            by_name.update(_run_on_demand(odfv, names, sources, out, values))
        for name in self.outputs:
            out[name] = by_name[name]
        return out

    def read(self, rows: Sequence[tuple]) -> pd.DataFrame:
        """Features for each entity row (a tuple in `keys` order), in input order; missing values are null."""
        return pd.DataFrame(self.read_columns(rows), columns=[*self.entity_columns, *self.outputs])


def service_keys(views) -> tuple[str, ...]:
    """The entity columns a service's rows carry: query_id, item_id, then the other join keys of
    `views` (the batch views it reads, directly or through on-demand views), sorted by name."""
    others = {k for view in views for k in view.join_keys} - set(PAIR_KEYS)
    return (*PAIR_KEYS, *sorted(others))


def answered_keys(store: FeatureStore, keys: Sequence[str]) -> tuple[str, ...]:
    """The entity columns Feast's answer starts with for entity rows of `keys`, in their order: the
    keys that are the join key of some entity registered in the project, whether or not the service
    reads it (Feast drops a row's other fields). For a repo declaring the query and item entities,
    all of `keys`."""
    registered = {e.join_key for e in store.list_entities()}
    return tuple(k for k in keys if k in registered)


def _run_on_demand(odfv, names: list[str], sources: set[str], entities: dict, values: dict) -> dict:
    """An on-demand view's outputs as Feast's online path yields them, via its registered udf.

    Feast hands a pandas udf the response so far (entity columns, every feature read from the
    declared source views, plus `<view>__<feature>` aliases of the declared inputs) and stores
    each output as a proto of its declared type; the same frame goes in here and the outputs
    are converted the way the proto round trip converts them, skipping Arrow and protos."""
    if odfv.mode != "pandas":
        raise NotImplementedError(f"on-demand view {odfv.name!r}: mode {odfv.mode!r}")
    inputs = dict(entities)
    for (view, feat), col in values.items():
        if view in sources:
            inputs[feat] = col
    for src in odfv.source_feature_view_projections.values():
        for f in src.features:
            inputs[f"{src.name}__{f.name}"] = inputs[f.name]
    result = odfv.feature_transformation.udf(pd.DataFrame(inputs))
    types = {f.name: f.dtype.to_value_type() for f in odfv.features}
    return {name: _as_feast_values(result[name], types[name]) for name in names}


def _as_feast_values(col: pd.Series, value_type: ValueType) -> list:
    """What to_dict() returns after Feast writes `col` into protos of `value_type` (NaN -> None)."""
    if value_type in (ValueType.FLOAT, ValueType.DOUBLE) and col.dtype.kind == "f":
        x = col.to_numpy().astype(np.float32 if value_type == ValueType.FLOAT else np.float64)
        out = x.astype(np.float64).astype(object)
        out[np.isnan(x)] = None
        return out.tolist()
    if value_type in (ValueType.INT64, ValueType.INT32) and col.dtype.kind in "iu":
        return col.to_numpy().astype(np.int64).tolist()
    arr = pa.Table.from_pandas(col.to_frame(), preserve_index=False).column(0).to_numpy()
    return [feast_value_type_to_python_type(v, value_type)
            for v in python_values_to_proto_values(arr, value_type)]
