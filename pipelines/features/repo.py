"""Load the declarations in feature_repo/ and apply them to a workspace's registry.

The repo is a plain Feast repo directory: its modules import each other by file name and import
the signal modules (view + producer) from pipelines.signals, as under `feast apply`. It is loaded
by path at run time, the way Feast loads a repo: nothing in pipelines imports a repo module by
name, so the only static dependency is feature_repo -> pipelines. Loading it ourselves rather than
through Feast's CLI lets the same declarations be applied to any workspace (demo, test temp dir,
production) and brings the signal registry in signals.py along with the Feast objects.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.data_source import DataSource
from feast.on_demand_feature_view import OnDemandFeatureView

from pipelines.signals.spec import Signal, signals_in
from pipelines.workspace import Workspace


class UnknownSignal(ValueError):
    """A signal name that the repo's registry does not hold."""


@dataclass
class RepoContents:
    """Every Feast object and Signal declared in a feature repo directory."""

    entities: list[Entity] = field(default_factory=list)
    sources: list[DataSource] = field(default_factory=list)
    views: list[FeatureView] = field(default_factory=list)
    on_demand_views: list[OnDemandFeatureView] = field(default_factory=list)
    services: list[FeatureService] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)

    def objects(self) -> list:
        return [*self.entities, *self.sources, *self.views, *self.on_demand_views, *self.services]

    def join_keys(self, view: FeatureView) -> list[str]:
        """A view's join keys from its entities (Feast infers view.join_keys only on apply)."""
        by_name = {e.name: e.join_key for e in self.entities}
        return [by_name[name] for name in view.entities]

    def signal(self, name: str) -> Signal:
        for s in self.signals:
            if s.name == name:
                return s
        raise UnknownSignal(f"no signal named {name!r}; registered: {[s.name for s in self.signals]}")


_BUCKETS = (
    (Entity, "entities"), (DataSource, "sources"), (OnDemandFeatureView, "on_demand_views"),
    (FeatureView, "views"), (FeatureService, "services"),
)


def load_repo(repo_dir: Path) -> RepoContents:
    """Import every module of the repo (fresh, so two repos in one process never mix) and collect."""
    repo_dir = Path(repo_dir).resolve()
    files = sorted(p for p in repo_dir.glob("*.py") if p.name != "__init__.py")
    if not files:
        raise FileNotFoundError(f"{repo_dir} holds no feature declarations (*.py)")
    names = [p.stem for p in files]
    for name in names:
        sys.modules.pop(name, None)
    sys.path.insert(0, str(repo_dir))
    importlib.invalidate_caches()
    try:
        modules = [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(repo_dir))
    contents = RepoContents()
    for module in modules:
        if module.__name__ == "signals":
            contents.signals = signals_in(vars(module))
            for signal in contents.signals:  # a registered signal brings its views along...
                for view in signal.views():
                    _collect(contents, view)
                for obj in vars(inspect.getmodule(signal.producer)).values():  # ...and its module's entities
                    if isinstance(obj, Entity):
                        _collect(contents, obj)
        for obj in vars(module).values():
            _collect(contents, obj)
    for view in contents.views:  # a source declared inline in a view is still a source (as in Feast)
        if view.batch_source is not None and not any(view.batch_source is s for s in contents.sources):
            contents.sources.append(view.batch_source)
    if not contents.signals:
        raise ValueError(f"{repo_dir / 'signals.py'} registers no Signal")
    return contents


def _collect(contents: RepoContents, obj: object) -> None:
    """File a Feast object under its kind, once (the same object may be bound in several modules)."""
    for cls, bucket in _BUCKETS:
        if isinstance(obj, cls):
            seen = getattr(contents, bucket)
            if not any(obj is o for o in seen):
                seen.append(obj)
            return


def anchored(contents: RepoContents, root: Path) -> RepoContents:
    """The contents with every relative FileSource path made absolute under the workspace.

    Feast resolves relative paths against repo_path for retrieval, but its duckdb
    materialization reads them against the process's cwd; anchoring at apply time makes every
    reader see the same file. Views and sources are copied, never changed in place: the
    declarations are module-level objects that other workspaces in the same process share."""
    sources = {}
    for source in contents.sources:
        if isinstance(source, FileSource) and not Path(source.path).is_absolute():
            copy_ = copy.deepcopy(source)
            copy_.file_options.uri = str(root / source.path)
            sources[id(source)] = copy_
    views = []
    for view in contents.views:
        if id(view.batch_source) in sources:
            view = copy.copy(view)
            view.batch_source = sources[id(view.batch_source)]
        views.append(view)
    return replace(contents, views=views, sources=[sources.get(id(s), s) for s in contents.sources])


def feature_store(ws: Workspace) -> FeatureStore:
    """A FeatureStore on the workspace (registry, duckdb offline store, configured online store)."""
    return FeatureStore(config=ws.repo_config())


def apply(ws: Workspace) -> RepoContents:
    """Register the repo's objects in the workspace registry and drop views no longer declared."""
    contents = anchored(load_repo(ws.repo_dir), ws.root)
    ws.write_feature_store_yaml()
    ws.features_dir.mkdir(parents=True, exist_ok=True)
    with ray_session(ws):  # with Ray, Feast's apply sets up its compute engine, which needs a Ray
        store = feature_store(ws)
        declared = {o.name for o in contents.views + contents.on_demand_views + contents.services}
        stale = [
            o for o in [*store.list_feature_services(), *store.list_on_demand_feature_views(),
                        *store.list_feature_views()]
            if o.name not in declared
        ]
        store.apply(contents.objects(), objects_to_delete=stale, partial=False)
    return contents


@contextmanager
def ray_session(ws: Workspace) -> Iterator[None]:
    """pipelines.features.ray_store.ray_session when the workspace's offline store is Ray; Ray is
    imported only then (seconds of start-up a duckdb workspace never pays)."""
    if not ws.offline.startswith("ray"):
        yield
        return
    from pipelines.features.ray_store import ray_session as session

    with session(ws):
        yield
