"""Where a unisup deployment keeps its state, and the Feast configuration derived from it.

A workspace is a directory that is also a valid Feast repo root: it holds the lake, the signal
tables the feature views read (paths in feature_repo/ are relative to it), the registry, the
SQLite online store and built datasets. Any Feast client can open it with
``FeatureStore(repo_path=<workspace>)`` once `unisup apply` has written feature_store.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml
from feast import RepoConfig

from pipelines.lake import Lake

PROJECT = "unisup"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = PROJECT_ROOT / "feature_repo"
HOMEDEPOT = PROJECT_ROOT.parent / "shared" / "data" / "homedepot"  # real judgments, beside the project
ENTITY_KEY_SERIALIZATION_VERSION = 3


class ConfigError(ValueError):
    """A setting that cannot work, named with its source (flag or environment variable)."""


def online_store_config(online: str, root: Path) -> dict:
    """Feast online_store block from 'sqlite' or 'redis://HOST:PORT[/DB]'."""
    if online == "sqlite":
        return {"type": "sqlite", "path": str(root / "online.db")}
    url = urlparse(online)
    if url.scheme != "redis" or not url.hostname:
        raise ConfigError(f"online store {online!r}: expected 'sqlite' or 'redis://HOST:PORT[/DB]'")
    db = int(url.path.strip("/") or 0)
    conn = f"{url.hostname}:{url.port or 6379},db={db}"
    if url.password:
        conn += f",password={url.password}"
    return {"type": "redis", "connection_string": conn}


@dataclass(frozen=True)
class Workspace:
    """Paths and online-store choice of one deployment; see the module docstring."""

    root: Path
    online: str = "sqlite"
    repo_dir: Path = DEFAULT_REPO

    @classmethod
    def from_env(cls, root: str | Path | None = None, online: str | None = None,
                 repo_dir: str | Path | None = None) -> Workspace:
        """Flags win over UNISUP_WORKSPACE / UNISUP_ONLINE / UNISUP_REPO, which win over defaults."""
        root = Path(root or os.environ.get("UNISUP_WORKSPACE", "workspace")).resolve()
        online = online or os.environ.get("UNISUP_ONLINE", "sqlite")
        repo_dir = Path(repo_dir or os.environ.get("UNISUP_REPO", DEFAULT_REPO)).resolve()
        online_store_config(online, root)  # validate early, with the offending value in the message
        return cls(root=root, online=online, repo_dir=repo_dir)

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
        self.root.mkdir(parents=True, exist_ok=True)
        out = self.root / "feature_store.yaml"
        out.write_text(yaml.safe_dump(self._config_dict(), sort_keys=False))
        return out

    def _config_dict(self) -> dict:
        return {
            "project": PROJECT,
            "registry": {"path": str(self.root / "registry.db"), "cache_ttl_seconds": 0},
            "provider": "local",
            "offline_store": {"type": "duckdb"},
            "online_store": online_store_config(self.online, self.root),
            "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
        }
