"""Where a unisup deployment keeps its state, and the Feast configuration derived from it.

A workspace is a directory that is also a valid Feast repo root: it holds the lake, the signal
tables the feature views read (paths in feature_repo/ are relative to it), the registry, the
SQLite online store and built datasets. Any Feast client can open it with
``FeatureStore(repo_path=<workspace>)`` once `unisup apply` has written feature_store.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from feast import RepoConfig
from redis.connection import parse_url

from pipelines.atomic import write_text
from pipelines.lake import Lake

PROJECT = "unisup"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = PROJECT_ROOT / "feature_repo"
HOMEDEPOT = PROJECT_ROOT.parent / "shared" / "data" / "homedepot"  # real judgments, beside the project
ENTITY_KEY_SERIALIZATION_VERSION = 3
REGISTRY_STORE = "pipelines.features.registry_store.AtomicFileRegistryStore"  # Feast's file store, written atomically


class ConfigError(ValueError):
    """A setting that cannot work, named with its source (flag or environment variable)."""


def online_store_config(online: str, root: Path) -> dict:
    """Feast online_store block from 'sqlite' or 'redis://[:PASSWORD@]HOST[:PORT][/DB]' (parsed by redis-py)."""
    if online == "sqlite":
        return {"type": "sqlite", "path": str(root / "online.db")}
    try:
        url = parse_url(online) if online.startswith("redis://") else {}
    except ValueError as exc:
        raise ConfigError(f"online store {online!r}: {exc}") from None
    if "host" not in url:
        raise ConfigError(f"online store {online!r}: expected 'sqlite' or 'redis://HOST:PORT[/DB]'")
    conn = f"{url['host']}:{url.get('port', 6379)},db={url.get('db', 0)}"  # Feast's connection-string form
    if url.get("password"):
        conn += f",password={url['password']}"
    return {"type": "redis", "connection_string": conn}


@dataclass(frozen=True)
class Workspace:
    """Paths and online-store choice of one deployment; see the module docstring. Built from the
    settings (pipelines.settings.Settings.as_workspace) by the CLI and the service."""

    root: Path
    online: str = "sqlite"
    repo_dir: Path = DEFAULT_REPO

    @property
    def lake(self) -> Lake:
        return Lake(self.root / "lake")

    @property
    def features_dir(self) -> Path:
        """Signal tables; feature_repo/ data sources point at features/<view>.parquet."""
        return self.root / "features"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def models_dir(self) -> Path:
        """Trained encoders, one HF directory per model version (pipelines.modeling.registry)."""
        return self.root / "models"

    @property
    def indexes_dir(self) -> Path:
        """FAISS indexes, one directory per (model version, catalog) with its manifest."""
        return self.root / "indexes"

    @property
    def cache_dir(self) -> Path:
        """Producers' scratch: fitted teachers, embeddings, candidate tables (safe to delete)."""
        return self.root / "cache"

    def repo_config(self) -> RepoConfig:
        return RepoConfig(**self._config_dict(), repo_path=self.root)

    def write_feature_store_yaml(self) -> Path:
        """Write feature_store.yaml so plain Feast tooling can open the workspace too."""
        return write_text(self.root / "feature_store.yaml", yaml.safe_dump(self._config_dict(), sort_keys=False))

    def _config_dict(self) -> dict:
        return {
            "project": PROJECT,
            "registry": {"path": str(self.root / "registry.db"), "cache_ttl_seconds": 0,
                         "registry_store_type": REGISTRY_STORE},
            "provider": "local",
            "offline_store": {"type": "duckdb"},
            "online_store": online_store_config(self.online, self.root),
            "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
        }
