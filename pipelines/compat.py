"""Every private Feast and redis-py hook unisup uses, behind a check of the tested versions.

The fast paths reach past public APIs in a few places; each hook is a function here, so an
upgrade has one file to review:

* `validate_feature_refs`: `feast.utils._validate_feature_refs`. The point-in-time engine
  (features/pit.py) raises Feast's own FeatureNameCollisionError for clashing feature names, so
  a service Feast refuses is refused here with the same error.
* `mmh3`: `feast.infra.online_stores.helpers._mmh3`. Feast names each Redis hash field by a
  murmur3 hash of "<view>:<feature>"; the fast writer and reader (features/redis_wire.py) must
  produce exactly those bytes to read and write the same hashes as Feast.
* `recv_into`: redis-py's `Connection._sock`. features/redis_pipe.RespPipe reads replies
  straight from the connection's socket into one reused buffer for hiredis to parse; redis-py has
  no public way to read raw bytes off a connection it set up (AUTH, SELECT, TLS).
* Feast's SQLite online layout (features/sqlite_fast.py): table per view, its columns and the
  int-seconds timestamps of Feast's sqlite3 adapter are Feast's implementation, not an API;
  sqlite_fast calls `require("feast")` when imported, and tests/test_sqlite_fast.py compares it
  row by row with Feast's own SQLite writer and reader.
* `AtomicFileRegistryStore` (features/registry_store.py): overrides Feast's
  `FileRegistryStore._write_registry` and reads its `_filepath`, to write registry.db through
  pipelines.atomic; it calls `require("feast")` when imported.

* `bf16_supported`: `torch.ops.mkldnn._is_mkldnn_bf16_supported`, whether the CPU runs bfloat16
  matmuls natively (modeling/encoder.py turns bf16 on only where it is fast).
* `parameter_versions`: each torch Parameter's `_version` counter, which a training step or
  load_state_dict bumps; the encoder remakes its bfloat16 copy when it changes.

`redis_connection` is not a hook: it parses Feast's documented connection string
("host:port[,host:port...],db=N[,password=...]") the way Feast's RedisOnlineStore does, instead of
calling its private `_parse_connection_string`; tests/test_compat.py checks the two agree.

Each hook first checks the installed version against TESTED and raises IncompatibleLibrary,
once per process and only when a hook is first used (importing this module checks nothing and
imports neither library). The gate for moving TESTED to a new Feast is tests/test_redis_fast.py,
tests/test_redis_cluster.py and tests/test_sqlite_fast.py,
whose byte-for-byte comparisons with Feast's own writer and reader cover these hooks and the
Redis layout redis_wire reproduces, plus tests/test_compat.py and tests/test_pit.py.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from importlib import metadata
from typing import Any

# Installed versions the hooks were tested with: an exact version, or a prefix ("7" = any 7.x).
TESTED = {"feast": "0.67.0", "redis": "7", "torch": "2.13"}

_checked: set[str] = set()


class IncompatibleLibrary(RuntimeError):
    """An installed library is not the version unisup's private hooks into it were tested with."""


def check_version(package: str, installed: str, tested: str) -> None:
    """Raise IncompatibleLibrary unless `installed` is `tested` or, for a prefix, a release in it."""
    if installed == tested or installed.startswith(tested + "."):
        return
    wanted = tested if tested.count(".") >= 2 else f"{tested}.x"
    raise IncompatibleLibrary(
        f"{package} {installed} is installed but unisup's private hooks into it (pipelines/compat.py) "
        f"were tested with {package} {wanted}: install {package} {wanted}, or run tests/test_redis_fast.py "
        f"and tests/test_compat.py against {installed} and update compat.TESTED")


def require(package: str) -> None:
    """Check the installed `package` against TESTED (once per process)."""
    if package not in _checked:
        check_version(package, metadata.version(package), TESTED[package])
        _checked.add(package)


def _feast(module: str, name: str) -> Callable[..., Any]:
    require("feast")  # before the import: a renamed hook must fail as a version error, not ImportError
    return getattr(importlib.import_module(module), name)


def validate_feature_refs(refs: list[str], full_feature_names: bool = False) -> None:
    """Feast's collision check over "<view>:<feature>" refs (raises FeatureNameCollisionError)."""
    _feast("feast.utils", "_validate_feature_refs")(refs, full_feature_names)


def mmh3(key: str) -> bytes:
    """The 4 bytes Feast names a Redis hash field by: murmur3_32 of `key`, little-endian."""
    return _feast("feast.infra.online_stores.helpers", "_mmh3")(key)


def recv_into(connection: Any, buffer: bytearray) -> int:
    """Read what has arrived on a connected redis-py Connection into `buffer`; bytes read
    (0: the server closed the connection)."""
    require("redis")
    sock = connection._sock
    if sock is None:
        from redis.exceptions import ConnectionError

        raise ConnectionError("the redis connection is not open")
    return sock.recv_into(buffer)


def redis_connection(connection_string: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """(host, port) of every node and the redis-py keyword arguments in Feast's "host:port,key=value,..."
    connection string.

    As Feast reads it: values that parse as JSON become that (db=1 -> 1, ssl=true -> True), others
    stay strings; a plain Redis is the first node, a cluster client starts from all of them."""
    nodes, params = [], {}
    for part in connection_string.split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
        else:
            host, _, port = part.partition(":")
            if not host or not port.isdigit():
                raise ValueError(f"redis connection string {connection_string!r}: expected "
                                 "'host:port[,host:port...][,key=value...]'")
            nodes.append((host, int(port)))
    if not nodes:
        raise ValueError(f"redis connection string {connection_string!r}: expected 'host:port[,key=value...]'")
    return nodes, params


def bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX); False if torch cannot say."""
    require("torch")
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def parameter_versions(module: Any) -> tuple:
    """(id, version counter) of every parameter of a torch module: changes when any weight is written."""
    require("torch")
    return tuple((id(p), p._version) for p in module.parameters())
