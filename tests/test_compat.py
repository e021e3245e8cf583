"""pipelines.compat: the version gate, and each private hook on the installed Feast and redis-py."""

from __future__ import annotations

import struct
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mmh3
import pytest
import redis
from feast.errors import FeatureNameCollisionError
from feast.infra.online_stores.redis import RedisOnlineStore

from pipelines import compat
from pipelines.compat import IncompatibleLibrary, check_version
from pipelines.workspace import online_store_config

# ------------------------------------------------------------------ the version check

def test_installed_versions_are_the_tested_ones():
    for package, tested in compat.TESTED.items():
        check_version(package, metadata.version(package), tested)
        compat.require(package)


@pytest.mark.parametrize("package,installed,tested", [
    ("feast", "0.67.0", "0.67.0"), ("feast", "0.67.0.post1", "0.67.0"),
    ("redis", "7.0.0", "7"), ("redis", "7.4.1", "7"), ("redis", "7.10.0b1", "7"),
])
def test_accepted_versions(package, installed, tested):
    check_version(package, installed, tested)


@pytest.mark.parametrize("package,installed,tested", [
    ("feast", "0.68.0", "0.67.0"), ("feast", "0.66.2", "0.67.0"), ("feast", "0.67.0rc1", "0.67.0"),
    ("feast", "0.67.01", "0.67.0"), ("redis", "8.0.0", "7"), ("redis", "6.4.0", "7"), ("redis", "70.1", "7"),
])
def test_other_versions_are_refused_in_one_line(package, installed, tested):
    with pytest.raises(IncompatibleLibrary) as err:
        check_version(package, installed, tested)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{package} {installed} is installed")
    assert f"tested with {package} {tested if package == 'feast' else '7.x'}" in message


def test_importing_compat_checks_and_imports_nothing():
    code = "import sys, pipelines.compat; print(sorted({'feast', 'redis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_hook_refuses_an_untested_version_when_first_used(monkeypatch):
    monkeypatch.setitem(compat.TESTED, "feast", "0.66.0")
    monkeypatch.setattr(compat, "_checked", set())
    with pytest.raises(IncompatibleLibrary, match=r"feast 0\.67\.0 is installed .* tested with feast 0\.66\.0"):
        compat.mmh3("view:feature")
    with pytest.raises(IncompatibleLibrary):
        compat.validate_feature_refs(["a:x"])


# ------------------------------------------------------------------ each hook on the real library

def test_validate_feature_refs_is_feasts_collision_check():
    compat.validate_feature_refs(["a:x", "b:y"])
    compat.validate_feature_refs(["a:x", "b:x"], full_feature_names=True)
    with pytest.raises(FeatureNameCollisionError):
        compat.validate_feature_refs(["a:x", "b:x"])


def test_mmh3_is_murmur3_little_endian():
    assert compat.mmh3("teacher_labels:expected_grade") == b"\x12xg2"
    for key in ["v:f", "é:长", ""]:
        assert compat.mmh3(key) == struct.pack("<I", mmh3.hash(key, signed=False))


def test_recv_into_reads_replies_off_the_socket(redis_server):
    pool = redis.Redis(port=redis_server.port).connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"*1\r\n$4\r\nPING\r\n"], check_health=False)
        buffer, got = bytearray(64), b""
        while not got.endswith(b"\r\n"):
            n = compat.recv_into(conn, buffer)
            assert n > 0
            got += bytes(buffer[:n])
        assert got == b"+PONG\r\n"
        conn.disconnect()
        with pytest.raises(redis.ConnectionError):
            compat.recv_into(conn, buffer)
    finally:
        pool.release(conn)


CONNECTION_STRINGS = [
    online_store_config("redis://127.0.0.1:6380/3", Path("."))["connection_string"],
    online_store_config("redis://:s3cret@cache.internal:7000/0", Path("."))["connection_string"],
    online_store_config("rediss://alice:123@h:1/2?ssl_ca_certs=/ca.pem", Path("."))["connection_string"],
    online_store_config("rediss+cluster://alice:null@a:1,b:2,c:3", Path("."))["connection_string"],
    "localhost:6379",
    "redis_master:6379,db=0,ssl=true,password=p=w",
    "h:1,db=2,password=123,socket_timeout=0.5,username=\"u\"",
]


@pytest.mark.parametrize("connection_string", CONNECTION_STRINGS)
def test_redis_connection_parses_as_feast_does(connection_string):
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    assert compat.redis_connection(connection_string) == ([(n["host"], int(n["port"])) for n in nodes], params)
    (host, port), *_ = compat.redis_connection(connection_string)[0]
    redis.Redis(host=host, port=port, **params)  # redis-py accepts every keyword


@pytest.mark.parametrize("connection_string", ["", "db=1", "host", "host:port,db=1", ":6379"])
def test_redis_connection_refuses_a_string_without_host_and_port(connection_string):
    with pytest.raises(ValueError, match="expected 'host:port"):
        compat.redis_connection(connection_string)


def test_torch_hooks_work_on_the_installed_torch():
    import torch

    assert isinstance(compat.bf16_supported(), bool)
    layer = torch.nn.Linear(3, 2)
    before = compat.parameter_versions(layer)
    assert compat.parameter_versions(layer) == before  # reading changes nothing
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert compat.parameter_versions(layer) != before  # a write bumps the counter
