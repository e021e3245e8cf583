"""Service settings: a YAML file, then environment variables, each overriding what came before.

    UNISUP_SERVE_CONFIG   path of a YAML file with any of the keys below (lower case)
    UNISUP_WORKSPACE      workspace dir (default ./workspace)
    UNISUP_ONLINE         'sqlite' or redis://HOST:PORT/DB (default sqlite)
    UNISUP_REPO           feature repo dir (default the project's feature_repo/)
    UNISUP_INDEX          index dir (default: the newest under <workspace>/indexes)
    UNISUP_MODEL_DIR      model dir (default: the index's model version, resolved in <workspace>/models)
    UNISUP_WORKERS        service processes, each with its own encoder and index (default 2, one per core:
                          a request is mostly Python, so one process uses about one core)
    UNISUP_TORCH_THREADS  intra-op threads of the encoder per process (default 1)
    UNISUP_LANES          batches (encode + search) a process may run at once, each on its own thread
                          (default 2: a process can use both cores when requests wait; serving/batcher.py)
    UNISUP_ONLINE_TIMEOUT seconds an online-store read may take before the answer degrades (default 0.5)

Host and port are BentoML's: `unisup serve --host/--port` or `bentoml serve --host/--port`; the
service's own default is 127.0.0.1:3000 (serving/service.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import yaml
from feast.errors import FeatureServiceNotFoundException

from pipelines.features.repo import feature_store
from pipelines.index.store import IndexManifest, find_index
from pipelines.workspace import ConfigError, Workspace

ENV_PREFIX = "UNISUP_"
FILE_ENV = "UNISUP_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Everything the service loads at start-up, resolved once."""

    workspace: Path = Path("workspace")
    online: str = "sqlite"
    repo: Path | None = None
    index: Path | None = None
    model_dir: Path | None = None
    workers: int = 2
    torch_threads: int = 1
    lanes: int = 2
    online_timeout: float = 0.5

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Defaults, then the YAML file named by UNISUP_SERVE_CONFIG, then UNISUP_* variables."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if environ.get(FILE_ENV):
            values.update(_read_file(Path(environ[FILE_ENV])))
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if environ.get(key):
                values[f.name] = environ[key]
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{environ.get(FILE_ENV)}: unknown keys {sorted(unknown)}; "
                              f"expected {[f.name for f in fields(cls)]}")
        return cls(**{f.name: _convert(f.name, values[f.name], f.type) for f in fields(cls) if f.name in values})

    def workspace_obj(self) -> Workspace:
        return Workspace.from_env(self.workspace, self.online, self.repo)

    def index_dir(self) -> Path:
        """The configured index, else the newest one in the workspace."""
        return self.index or find_index(self.workspace_obj().indexes_dir)

    def check(self) -> IndexManifest:
        """What the service needs before loading anything heavy: an index and, in the workspace's
        registry, the feature service it reads. Raises ConfigError / IndexNotFound with one line."""
        manifest = IndexManifest.read(self.index_dir())
        try:
            feature_store(self.workspace_obj()).get_feature_service(manifest.feature_service)
        except FeatureServiceNotFoundException as exc:
            raise ConfigError(f"{exc}: run `unisup apply` on {self.workspace}") from None
        return manifest


def _read_file(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{FILE_ENV}={path}: no such file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _convert(name: str, value: object, annotation: str) -> object:
    """Typed value from YAML or an environment string, naming the setting when it cannot be.
    Every number here is a count or a timeout, so it must be positive."""
    try:
        if "Path" in annotation:
            return Path(str(value))
        if annotation in ("int", "float"):
            number = int(value) if annotation == "int" else float(value)
            if not number > 0:
                raise ValueError(number)
            return number
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} = {value!r}: expected {annotation} > 0") from exc
