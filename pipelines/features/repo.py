"""Load the declarations in feature_repo/ and apply them to a workspace's registry.

The repo is a plain Feast repo directory (modules import each other by file name, as under
`feast apply`). We load it ourselves rather than through Feast's CLI so the same declarations
can be applied to any workspace (demo, test temp dir, production) and so the signal registry
in signals.py comes along with the Feast objects.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource
from feast.data_source import DataSource
from feast.on_demand_feature_view import OnDemandFeatureView

from pipelines.signals.spec import Signal, signals_in
from pipelines.workspace import Workspace


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
        raise KeyError(f"no signal named {name!r}; registered: {[s.name for s in self.signals]}")


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
        for obj in vars(module).values():
            for cls, bucket in _BUCKETS:
                if isinstance(obj, cls):
                    seen = getattr(contents, bucket)
                    if not any(obj is o for o in seen):
                        seen.append(obj)
                    break
        if module.__name__ == "signals":
            contents.signals = signals_in(vars(module))
    for view in contents.views:  # a source declared inline in a view is still a source (as in Feast)
        if view.batch_source is not None and not any(view.batch_source is s for s in contents.sources):
            contents.sources.append(view.batch_source)
    if not contents.signals:
        raise ValueError(f"{repo_dir / 'signals.py'} registers no Signal")
    return contents


def anchor_sources(contents: RepoContents, root: Path) -> None:
    """Make relative FileSource paths absolute under the workspace.

    Feast resolves relative paths against repo_path for retrieval, but its duckdb
    materialization reads them against the process's cwd; anchoring at apply time makes every
    reader see the same file."""
    for source in contents.sources:
        if isinstance(source, FileSource) and not Path(source.path).is_absolute():
            source.file_options.uri = str(root / source.path)


def feature_store(ws: Workspace) -> FeatureStore:
    """A FeatureStore on the workspace (registry, duckdb offline store, configured online store)."""
    return FeatureStore(config=ws.repo_config())


def apply(ws: Workspace) -> RepoContents:
    """Register the repo's objects in the workspace registry and drop views no longer declared."""
    contents = load_repo(ws.repo_dir)
    anchor_sources(contents, ws.root)
    ws.write_feature_store_yaml()
    ws.features_dir.mkdir(parents=True, exist_ok=True)
    store = feature_store(ws)
    declared = {o.name for o in contents.views + contents.on_demand_views + contents.services}
    stale = [
        o for o in [*store.list_feature_services(), *store.list_on_demand_feature_views(),
                    *store.list_feature_views()]
        if o.name not in declared
    ]
    store.apply(contents.objects(), objects_to_delete=stale, partial=False)
    return contents
