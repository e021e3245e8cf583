"""Point-in-time training sets from a FeatureService, with lineage.

`build_dataset` joins, for every entity row (query_id, item_id, event_timestamp), the latest
value of each feature stamped at or before the event and within the view's TTL. Rows whose
features are missing or expired are kept with nulls: dropping them would bias a training set
towards well-covered pairs. lineage.json records what the set was built from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
from feast import FeatureService, FeatureStore

from pipelines.atomic import write_json, write_parquet
from pipelines.features.repo import feature_store, ray_session
from pipelines.lake import utc_micros
from pipelines.signals.spec import table_path
from pipelines.workspace import Workspace

ENTITY_COLUMNS = ("query_id", "item_id", "event_timestamp")
ROW = "__row"


class EntityFileError(ValueError):
    """An entity-rows file that cannot be used, with the file and what is wrong."""


def read_entities(path: Path) -> pd.DataFrame:
    """Entity rows from parquet or CSV: query_id, item_id, event_timestamp (UTC)."""
    path = Path(path)
    if not path.exists():
        raise EntityFileError(f"{path}: no such file")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise EntityFileError(f"{path}: cannot read ({exc})") from exc
    missing = [c for c in ENTITY_COLUMNS if c not in df.columns]
    if missing:
        raise EntityFileError(f"{path}: missing columns {missing}; need {list(ENTITY_COLUMNS)}")
    for col in ENTITY_COLUMNS:
        bad = df[col].isna()
        if bad.any():
            raise EntityFileError(f"{path}: row {int(bad.idxmax()) + 1}, field {col!r} is empty")
    df = df.copy()
    df["query_id"], df["item_id"] = df["query_id"].astype(str), df["item_id"].astype(str)
    try:
        df["event_timestamp"] = utc_micros(df["event_timestamp"])
    except (ValueError, TypeError) as exc:
        raise EntityFileError(f"{path}: field 'event_timestamp' is not a timestamp ({exc})") from exc
    return df


def feast_historical(store: FeatureStore, service: FeatureService, entities: pd.DataFrame) -> pd.DataFrame:
    """Plain Feast get_historical_features, returned in the entity rows' order."""
    df = entities.assign(**{ROW: range(len(entities))})
    out = store.get_historical_features(entity_df=df, features=service).to_df()
    return out.sort_values(ROW).drop(columns=ROW).reset_index(drop=True)


def definitions_hash(store: FeatureStore, service: FeatureService) -> str:
    """sha256 over the specs (not timestamps) of the service and every view it reads."""
    h = hashlib.sha256(service.to_proto().spec.SerializeToString(deterministic=True))
    for proj in service.feature_view_projections:
        view = _view(store, proj.name)
        h.update(view.to_proto().spec.SerializeToString(deterministic=True))
    return h.hexdigest()


def _view(store: FeatureStore, name: str):
    try:
        return store.get_feature_view(name)
    except Exception:  # noqa: BLE001 - on-demand views live in another registry table
        return store.get_on_demand_feature_view(name)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DatasetResult:
    path: Path
    lineage: dict
    all_null: tuple[str, ...] = ()  # views with a feature null in every row, each with the likely cause


def build_dataset(ws: Workspace, entities: pd.DataFrame | Path, out_dir: Path,
                  service: str = "training", engine: str = "duckdb") -> DatasetResult:
    """Join `service` features onto entity rows point-in-time; write dataset.parquet + lineage.json.

    engine "ray" is Feast's get_historical_features on the workspace's Ray offline store
    (pipelines.features.ray_store), so a cluster's workers hold a partition each, not the tables."""
    if engine == "ray":
        if not ws.offline.startswith("ray"):
            ws = replace(ws, offline="ray")
        with ray_session(ws):
            return _build(ws, entities, out_dir, service, "feast", "ray")
    return _build(ws, entities, out_dir, service, engine, engine)


def _build(ws: Workspace, entities: pd.DataFrame | Path, out_dir: Path, service: str, engine: str,
           recorded: str) -> DatasetResult:
    store = feature_store(ws)
    fs = store.get_feature_service(service)
    entities_file = Path(entities) if not isinstance(entities, pd.DataFrame) else None
    rows = read_entities(entities_file) if entities_file else entities
    if engine == "feast":
        df = feast_historical(store, fs, rows)
    elif engine == "duckdb":
        from pipelines.features.pit import historical_features

        df = historical_features(store, fs, rows)
    else:
        raise ValueError(f"engine {engine!r}: expected 'duckdb', 'feast' or 'ray'")
    out_dir = Path(out_dir)
    path, lineage_path = out_dir / "dataset.parquet", out_dir / "lineage.json"
    lineage_path.unlink(missing_ok=True)  # a crash before the new one is written leaves no stale lineage
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), path)
    lineage = _lineage(ws, store, fs, rows, df, entities_file, recorded)
    write_json(lineage_path, lineage, indent=2)
    return DatasetResult(path=path, lineage=lineage, all_null=explain_all_null(ws, store, lineage, rows, df))


def explain_all_null(ws: Workspace, store: FeatureStore, lineage: dict, rows: pd.DataFrame,
                     df: pd.DataFrame) -> tuple[str, ...]:
    """One line per view with features null in EVERY row, naming them and the likely cause.

    Nulls in some rows are expected (rows are kept when a pair is missing or expired); a feature
    null everywhere almost always means the entity rows and the view's event times do not overlap,
    e.g. a signal built today joined onto rows of last month, which the point-in-time join rightly
    hides. Only views with such a feature are read (their event times), so the usual case costs nothing."""
    # lineage's rates are rounded to 6 digits, so a 1.0 there may hide a few values: the frame decides
    empty = {f for f, rate in lineage["null_rate"].items() if rate > 0.99 and df[f].isna().all()}
    if not empty:
        return ()
    times = utc_micros(rows["event_timestamp"])
    lines = []
    for name, features in lineage["feature_views"].items():
        null = [f for f in features if f in empty]
        if null:
            cause = _cause(ws, _view(store, name), whole_view=len(null) == len(features), times=times)
            lines.append(f"{name} ({', '.join(null)}): {cause}")
    return tuple(lines)


def _cause(ws: Workspace, view, whole_view: bool, times: pd.Series) -> str:
    """The likeliest reason, from the rows' event times against the view's first and last event and TTL."""
    if getattr(view, "batch_source", None) is None:
        return "an on-demand view: the features it is computed from are null in these rows"
    if not whole_view:
        return "the view's table holds nulls for these features at the rows' pairs"
    column = view.batch_source.timestamp_field
    events = utc_micros(pd.read_parquet(table_path(ws, view), columns=[column])[column])
    if events.empty:
        return f"its table {table_path(ws, view)} is empty"
    if times.max() < events.min():
        return (f"every row (latest {times.max()}) is older than the view's first event time {events.min()}; "
                "the point-in-time join hides values from a row's future: use entity rows at or after it")
    ttl = pd.Timedelta(view.ttl or 0)  # 0: no TTL
    if ttl and times.min() > events.max() + ttl:
        return (f"every row (earliest {times.min()}) is more than the view's TTL ({ttl}) after its last "
                f"event time {events.max()}: the values had expired")
    return f"no row's pair has a value in the view's table at the row's time (absent, or older than TTL {ttl})"


def _lineage(ws: Workspace, store: FeatureStore, fs: FeatureService, rows: pd.DataFrame, df: pd.DataFrame,
             entities_file: Path | None, engine: str) -> dict:
    views, sources = {}, {}
    for proj in fs.feature_view_projections:
        views[proj.name] = [f.name for f in proj.features]
        view = _view(store, proj.name)
        if getattr(view, "batch_source", None) is not None:
            path = table_path(ws, view)
            sources[proj.name] = {"path": str(path), "sha256": file_sha256(path)}
    features = [f for names in views.values() for f in names]
    return {
        "feature_service": fs.name,
        "feature_views": views,
        "definitions_sha256": definitions_hash(store, fs),
        "sources": sources,
        "entities": {"path": str(entities_file) if entities_file else None,
                     "sha256": file_sha256(entities_file) if entities_file else None,
                     "rows": len(rows)},
        "rows": len(df),
        "null_rate": {f: round(float(df[f].isna().mean()), 6) for f in features if f in df.columns},
        "engine": engine,
        "ray_gcs_address": _ray_gcs_address() if engine == "ray" else None,
        "created": datetime.now(UTC).isoformat(),
    }


def _ray_gcs_address() -> str:
    """The Ray cluster that joined the set (its GCS address): a local Ray's, or the cluster's."""
    import ray

    return ray.get_runtime_context().gcs_address
