"""What a signal is: a feature view, the function that produces its table, and where that table lives.

A platform team adds a signal by writing one module that defines a FeatureView over
`signal_source(name)`, a producer `produce(ctx) -> DataFrame` and `SIGNAL = Signal(view, producer)`,
then registering it with one line in feature_repo/signals.py. Apply, materialize, `signals build`,
dataset build and the FeatureServices discover it from there; no core code changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureView, Field, FileSource
from feast.on_demand_feature_view import OnDemandFeatureView

from pipelines.lake import Lake
from pipelines.ray_data import RayDataConfig
from pipelines.workspace import Workspace

FEATURES_DIR = "features"  # signal tables, relative to the workspace (the Feast repo_path)
TIMESTAMPS = ("event_timestamp", "created_timestamp")  # every signal table carries both


def signal_source(name: str) -> FileSource:
    """The parquet table a signal's producer writes; every table carries both timestamps.

    The path is relative to the workspace, so the same declaration serves a demo workspace, a
    test's temp dir and production."""
    return FileSource(
        name=f"{name}_source",
        path=f"{FEATURES_DIR}/{name}.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description=f"Table written by the {name} producer (pipelines/signals).",
    )


def bounds(lo: float, hi: float | None = None) -> dict[str, str]:
    """Field tags declaring a feature's valid range, lo <= value <= hi (hi None: no upper bound).

    Declared beside the feature, `Field(name="grade_p2", dtype=Float32, tags=bounds(0, 1))`, so the
    view stays the one definition: Feast keeps the tags in its registry and UI, and `signals build`
    refuses a producer's table with a value outside them before writing it (pipelines.features.validate).
    Null stays allowed: a feature may be unknown."""
    def text(x: float) -> str:  # "0", "101", "0.25": exact, and readable in Feast's UI
        return str(int(x)) if float(x).is_integer() else repr(float(x))
    return {"min": text(lo)} | ({"max": text(hi)} if hi is not None else {})


def declared_bounds(field: Field) -> tuple[float, float] | None:
    """A feature's declared (lo, hi), hi = inf when open; None when it declares no range."""
    if "min" not in field.tags and "max" not in field.tags:
        return None
    return float(field.tags.get("min", "-inf")), float(field.tags.get("max", "inf"))


def table_columns(view: FeatureView, entities: list[Entity]) -> list[str]:
    """A signal table's columns in order: the entities' join keys, both timestamps, the view's features."""
    return [*(e.join_key for e in entities), *TIMESTAMPS, *(f.name for f in view.features)]


def table_path(ws: Workspace, view: FeatureView) -> Path:
    """Where the view's FileSource points (relative paths resolve against the workspace)."""
    path = Path(view.batch_source.path)
    return path if path.is_absolute() else ws.root / path


@dataclass(frozen=True)
class SignalContext:
    """What a producer may read: the lake, the as-of time its rows are stamped with, a seed; and how
    it may run its model passes: in-process, or with `ray` (the engine is Ray, and the command holds
    a Ray session) on a Ray Data actor pool (pipelines.ray_data), writing the same table."""

    lake: Lake
    as_of: pd.Timestamp
    seed: int = 0
    quick: bool = False
    work_dir: Path | None = None  # scratch space for producers that cache models or indexes
    ray: RayDataConfig | None = None


Producer = Callable[[SignalContext], pd.DataFrame]


@dataclass(frozen=True)
class Signal:
    """A feature view, its producer, and what of it the retriever, the ranker and the engagement
    models read.

    derived: on-demand views computed from this signal's view (and others) at read time; they join
    the `training` service with the view. online_features: the features of the view or of a derived
    view that `retriever_online` reads; empty keeps the signal out of it. ranker_features: the
    numeric features the ranking stage reads, point-in-time (`ranking`) and online (`ranker_online`)
    alike; never a label (the human grade) or an identifier. engagement_features: what the pCTR /
    pCVR models read beyond the ranker features, point-in-time at each impression (`engagement`) and
    online in /search's one lookup (`ranker_online`, beside the ranker features)."""

    view: FeatureView
    producer: Producer
    online_features: tuple[str, ...] = ()
    derived: tuple[OnDemandFeatureView, ...] = ()
    ranker_features: tuple[str, ...] = ()
    engagement_features: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.view.name

    def produce(self, ctx: SignalContext) -> pd.DataFrame:
        return self.producer(ctx)

    def views(self) -> list[FeatureView | OnDemandFeatureView]:
        """The view and its derived views: what a training set reads of this signal."""
        return [self.view, *self.derived]

    def online_views(self) -> list[FeatureView | OnDemandFeatureView]:
        """`retriever_online`'s features, as projections (view[[names]]) of the views that own them."""
        return self._projections(self.online_features, "online")

    def ranker_views(self) -> list[FeatureView | OnDemandFeatureView]:
        """The ranking stage's features, as projections of the views that own them."""
        return self._projections(self.ranker_features, "ranker")

    def engagement_views(self) -> list[FeatureView | OnDemandFeatureView]:
        """The engagement models' own features, as projections of the views that own them."""
        return self._projections(self.engagement_features, "engagement")

    def search_views(self) -> list[FeatureView | OnDemandFeatureView]:
        """The ranker's and the engagement models' features together: what /search reads of this
        signal in its one lookup."""
        return self._projections(tuple(dict.fromkeys(self.ranker_features + self.engagement_features)), "search")

    @property
    def pair_keyed(self) -> bool:
        """Keyed by the query, the item or both: every (query, item) entity row can join it."""
        return set(self.view.entities) <= {"query", "item"}

    def _projections(self, names: tuple[str, ...], role: str) -> list[FeatureView | OnDemandFeatureView]:
        wanted = set(names)
        owned = [(v, [f.name for f in v.features if f.name in wanted]) for v in self.views()]
        unknown = wanted - {name for _, found in owned for name in found}
        if unknown:
            raise ValueError(f"signal {self.name!r}: {role} features {sorted(unknown)} are in none of its views")
        return [v[found] for v, found in owned if found]


def signals_in(namespace: dict) -> list[Signal]:
    """Every Signal bound in a module namespace, in definition order (the registry)."""
    return [v for v in namespace.values() if isinstance(v, Signal)]
