"""Where a unisup deployment keeps its state, and the Feast configuration derived from it.

A workspace is a directory that is also a valid Feast repo root: it holds the lake, the signal
tables the feature views read (paths in feature_repo/ are relative to it), the registry, the
SQLite online store and built datasets. Any Feast client can open it with
``FeatureStore(repo_path=<workspace>)`` once `unisup apply` has written feature_store.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from feast import RepoConfig

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


REDIS_SCHEMES = {"redis": (False, False), "rediss": (True, False),  # scheme -> (TLS, cluster)
                 "redis+cluster": (False, True), "rediss+cluster": (True, True)}
URL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
               "socket_timeout", "socket_connect_timeout")  # ?NAME=VALUE after the URL, handed to redis-py
EXPECTED_ONLINE = ("expected 'sqlite' or 'redis://[USER:PASSWORD@]HOST:PORT[/DB]' (rediss:// with TLS; "
                   "redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...] or rediss+cluster:// for a Redis Cluster; "
                   f"options ?{'|'.join(URL_OPTIONS)}=VALUE)")


OFFLINE_STORES = ("duckdb", "ray", "ray:HOST:PORT", "ray:auto")
# Feast's Ray offline store and Ray compute engine, their gaps closed in pipelines.features.ray_store
RAY_OFFLINE_STORE = "pipelines.features.ray_store.RayOfflineStore"
RAY_ENGINE = "pipelines.features.ray_store.RayComputeEngine"


def ray_address(offline: str) -> str | None:
    """The Ray cluster a Ray offline setting joins: None for 'ray' (a local Ray the command starts),
    HOST:PORT for 'ray:HOST:PORT' (a running cluster's GCS address), 'auto' for 'ray:auto' (the
    cluster of this node, or RAY_ADDRESS: what a command launched by `ray job submit` sees).

    The command runs as a driver on a machine that reaches every node of the cluster. Ray Client
    (ray://HOST:PORT) is refused rather than failing mid-command: Ray Data, which Feast's Ray store
    reads every view with, does not run over it (Ray 2.60: "'Worker' object has no attribute
    'core_worker'", ray-project/ray#48682, where Ray's maintainers point to job submission)."""
    if offline == "ray":
        return None
    if offline.startswith("ray://"):
        raise ConfigError(f"offline store {offline!r}: Ray Client (ray://) cannot run Ray Data, which Feast's Ray "
                          f"store reads with; run the command on a node of the cluster (e.g. `ray job submit -- "
                          f"unisup ...`) with offline ray:auto, or give the GCS address as ray:HOST:PORT")
    address = offline.removeprefix("ray:")
    host, _, port = address.rpartition(":")
    if not offline.startswith("ray:") or not (address == "auto" or (host and port.isdigit())):
        raise ConfigError(f"offline store {offline!r}: expected one of {', '.join(OFFLINE_STORES)}")
    return address


def offline_store_config(offline: str, root: Path) -> dict:
    """Feast's offline_store and batch_engine blocks from 'duckdb' or a Ray setting (ray_address):
    'ray' starts a local Ray for the command (pipelines.features.ray_store.ray_session), the others
    join a cluster.

    With Ray, Feast's Ray compute engine materializes: one writer at a time, as SQLite needs."""
    if offline == "duckdb":
        return {"offline_store": {"type": "duckdb"}}
    if not offline.startswith("ray"):
        raise ConfigError(f"offline store {offline!r}: expected one of {', '.join(OFFLINE_STORES)}")
    address = ray_address(offline)
    return {"offline_store": {"type": RAY_OFFLINE_STORE, "storage_path": str(root / "ray_storage"),
                              "ray_address": address},
            "batch_engine": {"type": RAY_ENGINE, "ray_address": address, "write_concurrency": 1}}


def masked(online: str) -> str:
    """The online store URL with its password replaced by ***: the only form logs, errors, printed
    settings and /metadata show. Everything up to the last '@' counts as credentials, so an
    unencoded '@', '/' or '#' in a password is masked too."""
    scheme, sep, rest = online.partition("://")
    if not sep:
        scheme, rest = "", online
    userinfo, at, location = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return online
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{location}"


def online_store_config(online: str, root: Path) -> dict:
    """Feast's online_store block from 'sqlite' or a Redis URL (EXPECTED_ONLINE); a bad URL is a
    ConfigError naming it, masked.

    Redis becomes Feast's connection string "host:port[,host:port...],key=value...", which Feast
    splits on ',' and JSON-decodes per value: credentials that would decode to something else
    (a password "123" to a number) are written JSON-quoted, and a ',' cannot be carried at all."""
    if online == "sqlite":
        return {"type": "sqlite", "path": str(root / "online.db")}

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"online store {masked(online)!r}: {reason}")

    scheme, sep, rest = online.partition("://")
    if not sep or scheme not in REDIS_SCHEMES:
        raise bad(EXPECTED_ONLINE)
    if any(c in rest.rpartition("@")[0] for c in "/?#"):  # else the URL would end inside the credentials
        raise bad("percent-encode '/', '?' and '#' in the user name and password (%2F, %3F, %23)")
    try:
        url = urlsplit(online)
        options = parse_qsl(url.query, keep_blank_values=True, strict_parsing=bool(url.query))
    except ValueError as exc:
        raise bad(str(exc)) from None
    if url.fragment:
        raise bad("expected no '#fragment'")
    tls, cluster = REDIS_SCHEMES[scheme]
    userinfo, _, hosts = url.netloc.rpartition("@")
    nodes = [_node(host, bad) for host in hosts.split(",")]
    if len(nodes) > 1 and not cluster:
        raise bad(f"several nodes are a cluster: {scheme}+cluster://")
    db = url.path.strip("/") or "0"
    if not db.isdigit() or (cluster and db != "0"):
        raise bad(f"database {db!r}: expected a number" + (", and only 0 in a cluster" if cluster else ""))
    parts = [f"{host}:{port}" for host, port in nodes] + ([] if cluster else [f"db={int(db)}"])
    user, _, password = userinfo.partition(":")
    for key, value in (("username", unquote(user)), ("password", unquote(password))):
        if value:
            if "," in value:
                raise bad(f"the {key} contains ',', which Feast's connection string cannot carry")
            parts.append(f"{key}={_json_quoted(value)}")
    if tls:
        parts.append("ssl=true")
    for key, value in options:
        if key not in URL_OPTIONS:
            raise bad(f"unknown option {key!r}: expected one of {', '.join(URL_OPTIONS)}")
        if key.startswith("ssl_") and not tls:
            raise bad(f"option {key!r} needs TLS: {scheme.replace('redis', 'rediss', 1)}://")
        if "," in value or not value:
            raise bad(f"option {key!r}: expected a value without ','")
        parts.append(f"{key}={value}")
    return {"type": "redis", **({"redis_type": "redis_cluster"} if cluster else {}),
            "connection_string": ",".join(parts)}


def _node(location: str, bad: Callable[[str], ConfigError]) -> tuple[str, int]:
    """(host, port) of one HOST[:PORT] (port 6379 by default, as redis-py's URLs have it)."""
    host, _, port = location.rpartition(":") if ":" in location else (location, "", "6379")
    if not host:
        raise bad(f"no host in {location!r}: expected HOST:PORT")
    if ":" in host or "[" in host:
        raise bad(f"host {location!r}: expected a name or IPv4 address (Feast's connection string "
                  "cannot carry IPv6 literals)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad(f"port {port!r} of {location!r}: expected 1-65535")
    return host, int(port)


def _json_quoted(value: str) -> str:
    """`value` as Feast's JSON-decoding parser will read it back: itself, or JSON-quoted if it would
    decode to something else (123, true, null, "x")."""
    try:
        json.loads(value)
    except json.JSONDecodeError:
        return value
    return json.dumps(value)


@dataclass(frozen=True)
class Workspace:
    """Paths and online-store choice of one deployment; see the module docstring. Built from the
    settings (pipelines.settings.Settings.as_workspace) by the CLI and the service."""

    root: Path
    online: str = "sqlite"
    repo_dir: Path = DEFAULT_REPO
    offline: str = "duckdb"  # or ray, ray:HOST:PORT, ray:auto: ray_address

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

    @property
    def online_type(self) -> str:
        """'sqlite' or 'redis' (one server or a cluster): which fast writer and reader this store takes."""
        return online_store_config(self.online, self.root)["type"]

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
            **offline_store_config(self.offline, self.root),
            "online_store": online_store_config(self.online, self.root),
            "entity_key_serialization_version": ENTITY_KEY_SERIALIZATION_VERSION,
        }
