"""`--engine ray`: Feast's Ray offline store and Ray compute engine, with the gaps for our views closed here.

The workspace config names this module's RayOfflineStore as the offline store (a subclass of Feast's
feast.infra.offline_stores.contrib.ray_offline_store.ray.RayOfflineStore, so Feast's reader, Ray
initialisation, RayRetrievalJob and on-demand handling are Feast's) and this module's RayComputeEngine
(Feast's `ray.engine`, subclassed) as the batch engine (materialize). Nothing else in pipelines knows these gaps.

Gaps of Feast 0.67's Ray get_historical_features for our views (found reading ray.py and checked
against the duckdb engine on tests/test_pit.py's tables):
  * TTL is never applied: an expired value is returned (engagement_stats, TTL 7 days);
  * ties on the event time keep whichever row comes last in the file, not the greatest
    created_timestamp (drop_duplicates keep="last");
  * entity rows are dropped: duplicates of (keys, event time) and rows with null keys, and every
    row of a batch when the view has no row at all (`batch.head(0)`);
  * its broadcast join (views under broadcast_join_threshold_mb) sorts the view by keys then time,
    which merge_asof refuses ("right keys must be sorted") as soon as there are two keys, so it
    falls back to a row-by-row join: minutes at thousands of rows, unusable at 1M;
  * its distributed join (larger views) matches only rows inside the same time window
    (window_size_for_joins, 1 h), so a value from an earlier hour is never seen;
  * dtypes go through its own casts (float32 features come back float64).
The on-demand gate view itself works: Feast's RetrievalJob applies it to the joined frame.

Workaround, in one place: get_historical_features keeps Feast's path around the join (the views
and refs Feast resolved, its source reader, its RayRetrievalJob that applies on-demand views) and
replaces the per-view join with a distributed one on Ray tasks: entity rows and the view's rows are
hash-partitioned by join key (so a worker holds one partition of each, never a whole table) and each
partition runs the duckdb engine's own sort-merge (pipelines.features.pit._latest), so both engines
share one definition of Feast's semantics.

Materialization goes through Feast's Ray compute engine, with one gap closed by RayComputeEngine
below: its TTL filter, on a materialization, keeps only rows newer than the *wall clock* minus the
view's TTL, whatever window was asked for, so materializing up to an earlier end (a backfill, or
tables stamped days ago) wrote nothing for a view with a short TTL (engagement_stats, 7 days). The
task's own window already bounds the rows ([start, end], start = end - TTL for a full run), as in
Feast's other engines and our fast writers, so the subclass drops that filter on materialization.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from feast import FeatureView, FileSource
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.ray.compute import RayComputeEngine as FeastRayComputeEngine
from feast.infra.compute_engines.ray.config import RayComputeEngineConfig as FeastRayComputeEngineConfig
from feast.infra.compute_engines.ray.feature_builder import RayFeatureBuilder
from feast.infra.compute_engines.ray.job import RayMaterializationJob
from feast.infra.offline_stores.contrib.ray_offline_store import ray as feast_ray
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.utils import _get_column_names
from ray.data import DataContext

from pipelines import ray_data
from pipelines.features import pit
from pipelines.workspace import Workspace, ray_address

LOCAL_CPUS = 2  # the local Ray a command starts: this machine's share, not every core
LOCAL_OBJECT_STORE = 512 << 20  # bytes; Ray spills to its temp dir beyond this
LOCAL_MEMORY = 4 << 30  # bytes of task heap Ray may schedule against
ROWS_PER_PARTITION = 500_000  # entity + view rows one worker joins at a time
ROW, TS, CREATED = "__row", "__ts", "__created"


class RayOfflineStoreConfig(feast_ray.RayOfflineStoreConfig):
    """Feast's Ray store settings, under this module's store type (Feast derives the name)."""

    type: Literal["pipelines.features.ray_store.RayOfflineStore"] = "pipelines.features.ray_store.RayOfflineStore"


class RayComputeEngineConfig(FeastRayComputeEngineConfig):
    """Feast's Ray compute engine settings, under this module's engine type (Feast derives the name)."""

    type: Literal["pipelines.features.ray_store.RayComputeEngine"] = "pipelines.features.ray_store.RayComputeEngine"


class _WindowedBuilder(RayFeatureBuilder):
    """Feast's plan builder, without the wall-clock TTL filter on a materialization (module docstring)."""

    def build_filter_node(self, view, input_node):
        node = super().build_filter_node(view, input_node)
        if self.is_materialization:
            node.ttl = None
        return node


class RayComputeEngine(FeastRayComputeEngine):
    """Feast's Ray compute engine, materializing through _WindowedBuilder; the rest is Feast's."""

    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask, from_offline_store: bool = False,
                         **kwargs: Any):
        if from_offline_store:  # Feast's legacy path reads the window itself, without the filter
            return super()._materialize_one(registry, task, from_offline_store, **kwargs)
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        try:
            result = _WindowedBuilder(registry, task.feature_view, task, self.config).build().execute(
                self.get_execution_context(registry, task))
        except Exception as exc:  # noqa: BLE001 - Feast's contract: a failed job, raised by the caller
            return RayMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
        return RayMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED, result=result)


@contextmanager
def ray_session(ws: Workspace, cpus: int = LOCAL_CPUS) -> Iterator[None]:
    """Ray for the duration of one command when the workspace's offline store is Ray: a local Ray
    capped to `cpus` (LOCAL_CPUS) on loopback, or this process joined as a driver to the cluster the
    setting names (pipelines.workspace.ray_address).

    Started here rather than by Feast, whose local start takes every core and no memory cap. A Ray
    already running in this process (a test fixture, a notebook) is used as it is and left running."""
    if not ws.offline.startswith("ray"):
        yield
        return
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    address, temp = ray_address(ws.offline), None
    if address:
        ray.init(address=address, **quiet)
    else:
        temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
        ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE, _memory=LOCAL_MEMORY,
                 _temp_dir=temp, _node_ip_address="127.0.0.1", include_dashboard=False, **quiet)
    try:
        yield
    finally:
        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def quiet_ray() -> None:
    """Silence what Ray Data and Feast's Ray store say on every call and a user cannot act on:
    Ray Data's (pipelines.ray_data.quiet_ray) and Feast's schema-validation chatter."""
    ray_data.quiet_ray()
    for name in ("feast.infra.offline_stores.contrib.ray_offline_store", "feast.infra.compute_engines.ray",
                 "feast.infra.ray_initializer"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class _View:
    """What the join needs from one feature view, as Feast resolved it for this call."""

    view: FeatureView
    keys: dict[str, str]  # source column -> entity column
    timestamp: str  # source column
    created: str | None  # source column
    features: dict[str, str]  # source column -> output column
    ttl_us: int | None


class RayOfflineStore(feast_ray.RayOfflineStore):
    """Feast's Ray offline store with a correct point-in-time join (module docstring)."""

    @staticmethod
    def get_historical_features(config: RepoConfig, feature_views: list[FeatureView], feature_refs: list[str],
                                entity_df: pd.DataFrame | str | None, registry: BaseRegistry, project: str,
                                full_feature_names: bool = False, **kwargs: Any) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise ValueError("the Ray engine joins entity rows given as a DataFrame")
        store = feast_ray.RayOfflineStore()
        store._init_ray(config)  # Feast's own: attaches to the running Ray, sets its DataContext
        quiet_ray()
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        skip = {o.name for o in odfvs}
        reads = [r for fv in feature_views if fv.name not in skip
                 for r in [_resolve(fv, feature_refs, registry, project, full_feature_names)] if r.features]
        ts_col = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes)))
        ent = entity_df.reset_index(drop=True)
        columns: dict[str, object] = {
            c: pit._utc_us(ent[c]) if c == ts_col or pd.api.types.is_datetime64_any_dtype(ent[c]) else ent[c].copy()
            for c in ent.columns}
        ets = pit._micros(pa.chunked_array([pa.array(columns[ts_col])]))
        # one view's read at a time (Ray Data reads started together only pile up workers on a small
        # node); its join tasks run while the next view is read
        # Ray 2.60's parquet reader (datasource V2) starts 32 footer-reading actors per read: 160
        # processes for the `training` service's five views, ~1 s a view against 0.01-0.07 s for pyarrow
        # (benchmarks/bench_dataset.py). V1 reads the same rows without them; set for these reads only.
        context = DataContext.get_current()
        v2, context.use_datasource_v2 = context.use_datasource_v2, False
        try:
            running = [(r, _submit(store, config, r, ent, ets)) for r in reads]
        finally:
            context.use_datasource_v2 = v2
        for r, refs in running:
            columns.update(_collect(r, refs))
        job = feast_ray.RayRetrievalJob(pd.DataFrame(columns, copy=False),
                                        staging_location=config.offline_store.storage_path,
                                        config=config.offline_store)
        job._full_feature_names = full_feature_names
        job._on_demand_feature_views = odfvs
        job._set_metadata_info(feature_refs, entity_df)
        return job


def _resolve(fv: FeatureView, refs: list[str], registry: BaseRegistry, project: str, full_names: bool) -> _View:
    """The view's requested features and columns, with Feast's own helpers (field mapping, join key map)."""
    name = fv.projection.name_to_use()
    wanted = [r.split(":", 1)[1] for r in refs if r.startswith(name + ":")]
    entities = [registry.get_entity(e, project) for e in fv.entities]
    join_keys, _, timestamp, created = _get_column_names(fv, entities)
    mapping = fv.batch_source.field_mapping or {}
    back = {dst: src for src, dst in mapping.items()}
    keymap = fv.projection.join_key_map or {}
    keys = {k: keymap.get(mapping.get(k, k), mapping.get(k, k)) for k in join_keys}
    features = {back.get(f, f): f"{name}__{f}" if full_names else f for f in wanted}
    ttl = fv.ttl // timedelta(microseconds=1) if fv.ttl else None  # Feast: `if ttl:`, 0 = no expiry
    return _View(fv, keys, timestamp, created or None, features, ttl)


def _submit(store: feast_ray.RayOfflineStore, config: RepoConfig, v: _View, ent: pd.DataFrame,
            ets: np.ndarray) -> list:
    """Start one view's join; returns the refs of its partitions' results.

    A map-reduce on Ray tasks: Feast's reader loads the view's blocks on the cluster, each block is
    split by the hash of its join keys, and one task per partition joins its entity rows with the
    view rows of the same keys. Tasks rather than a Ray Data groupby: the same shuffle, without the
    several seconds of planning and actor start-up a groupby costs per call."""
    import ray

    columns = list(dict.fromkeys([*v.keys, v.timestamp, *filter(None, [v.created]), *v.features]))
    view_ds = store._resolve_source_dataset(v.view.batch_source, config, columns=columns)
    view_ds = view_ds.materialize()  # read once on the cluster; the blocks stay in its object store
    cpus = int(ray.cluster_resources().get("CPU", 1))
    parts = max(2, cpus, math.ceil((len(ent) + view_ds.count()) / ROWS_PER_PARTITION))
    empty = _empty(store, config, v, view_ds, columns)  # what an empty file's untyped block stands for
    blocks = view_ds.to_arrow_refs() or [ray.put(empty)]
    entity_side = pa.table({ROW: np.arange(len(ent), dtype=np.int64), TS: ets,
                            **{e: pa.array(ent[e], from_pandas=True) for e in v.keys.values()}})
    split = ray.remote(_split_view).options(num_returns=parts)
    pieces = [split.remote(block, v, parts, empty) for block in blocks]
    join = ray.remote(_join_partition)
    return [join.remote(v, entity_piece, *(p[i] for p in pieces))
            for i, entity_piece in enumerate(_split(entity_side, list(v.keys.values()), parts))]


def _empty(store: feast_ray.RayOfflineStore, config: RepoConfig, v: _View, view_ds: Any,
           columns: list[str]) -> pa.Table:
    """A typed empty table of the view's columns: Ray types an empty file's columns null, so a
    file's come from its parquet footer."""
    if not isinstance(v.view.batch_source, FileSource):
        return view_ds.schema().base_schema.empty_table()
    fs, path = pafs.FileSystem.from_uri(store._get_source_path(v.view.batch_source, config))
    return pq.read_schema(path, filesystem=fs).empty_table().select(columns)


def _collect(v: _View, refs: list) -> dict[str, pd.Series]:
    """The view's features in the entity rows' order (every row comes back exactly once), converted
    as Feast's arrow->pandas does: floats keep their width, integers turn float64 with a null."""
    import ray

    table = pa.concat_tables(ray.get(refs))
    table = table.take(pc.sort_indices(table[ROW]))
    return {out: table[out].to_pandas() for out in v.features.values()}


def _split(table: pa.Table, keys: list[str], parts: int) -> list[pa.Table]:
    """`table` cut into `parts` by a hash of its join key values that every worker computes alike."""
    frame = pd.DataFrame({k: pd.Series(table[k].to_numpy(zero_copy_only=False), dtype=object) for k in keys})
    part = (pd.util.hash_pandas_object(frame, index=False).to_numpy() % np.uint64(parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    table = table.take(order)
    return [table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def _split_view(block: pa.Table, v: _View, parts: int, empty: pa.Table) -> list[pa.Table]:
    """A block of the view's rows, keys under the entity rows' names and stamps as UTC microseconds
    (null: int64 min, which never matches and loses created ties, as Feast's NULLS LAST), split."""
    block = block if block.num_rows else empty
    n = block.num_rows
    table = pa.table({
        **{e: block[k] for k, e in v.keys.items()},
        TS: pit._micros(block[v.timestamp]),
        CREATED: pit._micros(block[v.created]) if v.created else np.zeros(n, np.int64),
        **{out: block[src] for src, out in v.features.items()}})
    return _split(table, list(v.keys.values()), parts)


def _join_partition(v: _View, ents: pa.Table, *pieces: pa.Table) -> pa.Table:
    """One partition's entity rows, each with the features of the view row Feast would pick (pit._latest)."""
    rows = pa.concat_tables(pieces)
    keys = list(v.keys.values())
    if not ents.num_rows:  # nothing to join (and an empty key column would be typed null)
        return rows.select(list(v.features.values())).slice(0, 0).append_column(ROW, ents[ROW])
    codes = {k: pit._entity_codes(ents[k].to_pandas()) for k in keys}
    ek, vk = pit._keys(rows, {k: k for k in keys}, codes)
    rid = pit._latest(ek, ents[TS].to_numpy(), vk, rows[TS].to_numpy(), rows[CREATED].to_numpy(), v.ttl_us)
    picked = rows.select(list(v.features.values())).take(pa.array(rid, mask=rid < 0))
    return picked.append_column(ROW, ents[ROW])
