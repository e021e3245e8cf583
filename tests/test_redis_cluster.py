"""Feast's Redis online store on a Redis Cluster, and behind TLS, a password or an ACL user.

Real redis-server processes on free loopback ports in temp dirs, never the shared 6379: a 3-master
cluster (`redis-cli --cluster create`) with TLS and an ACL user, a server with --requirepass, and
a TLS server with an ACL user, certificates made here by openssl. Feast is the oracle as in
test_redis_fast: its own writer for the stored bytes, its own reader for the values read.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from hypothesis import given
from hypothesis import strategies as st
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.features.materialize import materialize
from pipelines.features.online import OnlineFeatures
from pipelines.features.redis_fast import RedisFeatureReader, materialize_redis, write_view
from pipelines.features.redis_pipe import redis_client
from pipelines.features.redis_wire import encode_key
from pipelines.features.repo import apply, feature_store
from pipelines.features.watermark import check, online_marks
from pipelines.settings import Settings
from pipelines.workspace import ConfigError, Workspace, masked, online_store_config
from serving.retriever import fail_fast

from conftest import RedisServer, copy_repo, free_port, prepare
from test_redis_fast import (
    END,
    SLOW,
    dump,
    edge_tables,
    feast_materialize,
    feast_write,
    read_equals_feast,
    request_pairs,
    table_strategy,
)

USER, PASSWORD = "alice", "s3cret-pw"
ACL_USER = ["--user", "default", "off", "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: it makes the test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def tls_args(port: int, cert: tuple[Path, Path]) -> list[str]:
    """TLS only, on `port`; clients need no certificate of their own."""
    return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert[0]), "--tls-key-file", str(cert[1]),
            "--tls-ca-cert-file", str(cert[0]), "--tls-auth-clients", "no"]


class Cluster:
    """Three masters (no replicas) on TLS with an ACL user, made by `redis-cli --cluster create`. A
    master killed and started again keeps its port and nodes.conf, so it rejoins with its slots."""

    def __init__(self, workdir: Path, cert: tuple[Path, Path], masters: int = 3):
        self.cert = cert
        self.client_kwargs = {"ssl": True, "ssl_ca_certs": str(cert[0]), "username": USER, "password": PASSWORD}
        self.nodes = []
        for i in range(masters):
            port = free_port()
            args = [*tls_args(port, cert), "--tls-cluster", "yes", "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf", "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", "1000", *ACL_USER]
            (workdir / f"node{i}").mkdir()
            self.nodes.append(RedisServer(workdir / f"node{i}", args, self.client_kwargs, port))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"rediss+cluster://{USER}:{PASSWORD}@{hosts}?ssl_ca_certs={self.cert[0]}"

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in self.nodes], **self.client_kwargs)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--tls", "--cacert", str(self.cert[0]), "--user", USER, "--pass", PASSWORD,
                        "--no-auth-warning", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self, timeout: float = 20) -> None:
        """Until every node's `cluster info` says cluster_state:ok."""
        deadline = time.monotonic() + timeout
        while not all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, cert):
    c = Cluster(tmp_path_factory.mktemp("cluster"), cert)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Workspace:
    """The synthetic lake's signals, applied; `on(lake, url)` is the same workspace on another store."""
    root = tmp_path_factory.mktemp("lake")
    return prepare(Workspace(root=root / "ws", online="sqlite", repo_dir=copy_repo(root / "repo")))


def on(ws: Workspace, online: str) -> Workspace:
    return Workspace(root=ws.root, online=online, repo_dir=ws.repo_dir)


@pytest.fixture(scope="module")
def cluster_ws(lake, cluster) -> Workspace:
    """The lake materialized into the cluster by the fast writer."""
    ws = on(lake, cluster.url)
    materialize_redis(ws, end=END, incremental=False)
    return ws


def without_project(data: dict, project: bytes) -> dict:
    """A dump's keys without their project suffix: two writers' hashes under different projects compared."""
    assert all(k.endswith(project) for k in data)
    return {k[:-len(project)]: v for k, v in data.items()}


# ------------------------------------------------------------------ the cluster

def test_cluster_holds_what_feast_writes_byte_for_byte(tmp_path, cluster):
    ws = Workspace(root=tmp_path / "ws", online=cluster.url, repo_dir=copy_repo(tmp_path / "repo"))
    apply(ws)
    edge_tables(ws)
    client = cluster.client()
    client.flushall()
    feast_materialize(ws)
    feasts = dump(client)
    client.flushall()
    materialize_redis(ws, end=END, incremental=False)
    ours = dump(client)
    assert ours == feasts and len(ours) > 20
    assert all(n.client().dbsize() > 0 for n in cluster.nodes)  # every master holds some of the keys


def test_write_view_on_a_cluster_writes_what_feast_writes(tmp_path, cluster):
    """Batches of 4 spread over the masters, later tables meeting what earlier ones stored (dedup):
    our writer under project `ours`, Feast's under `unisup`, the same hashes."""
    ws = Workspace(root=tmp_path / "ws", online=cluster.url, repo_dir=copy_repo(tmp_path / "repo"))
    apply(ws)
    store = feature_store(ws)
    view = store.get_feature_view("teacher_labels")
    client = cluster.client()

    @given(st.lists(table_strategy(view), min_size=1, max_size=3))
    @SLOW
    def agrees(tables):
        client.flushall()
        for table in tables:
            feast_write(store, view, table)
            write_view(client, "ours", view, table, batch_size=4)
            stored = dump(client)
            feasts = {k: v for k, v in stored.items() if k.endswith(b"unisup")}
            ours = {k: v for k, v in stored.items() if k.endswith(b"ours")}
            assert without_project(ours, b"ours") == without_project(feasts, b"unisup")

    agrees()


@pytest.mark.parametrize("service", ["retriever_online", "training"])
def test_fast_reader_on_a_cluster_equals_feast(cluster_ws, service):
    read_equals_feast(cluster_ws, RedisFeatureReader(cluster_ws, service), service)


def test_entry_points_take_the_fast_paths_on_a_cluster(cluster_ws, cluster):
    online = OnlineFeatures(cluster_ws)
    assert isinstance(online.reader, RedisFeatureReader)
    pairs = request_pairs(cluster_ws, np.random.default_rng(3))
    plain = OnlineFeatures(cluster_ws, engine="feast").get_online_features(pairs)
    fast = online.get_online_features(pairs)
    pd.testing.assert_frame_equal(fast, plain[list(fast.columns)])
    before = dump(cluster.client())
    report = materialize(cluster_ws, incremental=False, end=END)
    assert report.views and dump(cluster.client()) == before  # rewrites nothing: Feast's dedup
    store = feature_store(cluster_ws)
    state = check(online_marks(store, timeout=0.5), store.list_feature_views(), datetime.now(UTC))
    assert state.error is None and state.missing() == [] and len(state.views) == len(report.views)


def move_slot(cluster: Cluster, key: bytes) -> None:
    """Move `key`'s hash slot, with its keys, to another master: MIGRATING / IMPORTING, MIGRATE,
    then every master assigns the slot to its new owner, as `redis-cli --cluster reshard` does."""
    slot = key_slot(key)
    ids = {n.port: n.client().cluster("myid") for n in cluster.nodes}
    owner = cluster.client().get_node_from_key(key)
    source = next(n for n in cluster.nodes if n.port == owner.port)
    target = next(n for n in cluster.nodes if n is not source)
    target.client().cluster("setslot", slot, "importing", ids[source.port])
    source.client().cluster("setslot", slot, "migrating", ids[target.port])
    keys = [k.encode() for k in source.client().cluster("getkeysinslot", slot, 1000)]  # redis-py decodes them
    assert key in keys
    source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "AUTH2", USER, PASSWORD,
                                     "KEYS", *keys)
    for node in cluster.nodes:
        node.client().cluster("setslot", slot, "node", ids[target.port])


def test_reader_follows_a_moved_slot(cluster_ws, cluster):
    """A reader whose slot map is stale gets MOVED, reloads the map and answers in the same call."""
    reader = RedisFeatureReader(cluster_ws)
    pairs = request_pairs(cluster_ws, np.random.default_rng(4))
    before, client = reader.read(pairs), reader.connector.client
    q, i = pairs[0]
    move_slot(cluster, encode_key({"query_id": q, "item_id": i}, feature_store(cluster_ws).project))
    pd.testing.assert_frame_equal(reader.read(pairs), before)
    assert reader.connector.client is not client  # the MOVED reply made it reload the slot map


def test_a_killed_master_degrades_reads_and_they_recover(cluster_ws, cluster):
    """Reads run in a loop while one master is killed (SIGKILL) and later restarted on its port and
    nodes.conf: each read either answers or fails within the timeout (the service catches that and
    answers degraded), and answers come back once the master rejoins; it lost its keys (no
    persistence), so they read null until `materialize --full` refills them."""
    online = OnlineFeatures(cluster_ws)
    fail_fast(online, 0.5)  # what the service does
    pairs = request_pairs(cluster_ws, np.random.default_rng(5))
    expected = online.get_online_features(pairs)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def reads() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                online.get_online_features(pairs)
                outcomes.append((time.monotonic() - started, "ok"))
            except Exception as exc:  # noqa: BLE001 - recorded: what the service would degrade on
                outcomes.append((time.monotonic() - started, type(exc).__name__))
            time.sleep(0.02)

    thread = threading.Thread(target=reads)
    thread.start()
    try:
        time.sleep(0.3)
        victim = cluster.nodes[1]
        victim.kill()
        time.sleep(1.5)  # past the node timeout: the cluster reports itself down
        down = len(outcomes)
        victim.start()
        cluster.wait_ok()
        deadline = time.monotonic() + 10
        while outcomes[-1][1] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    kinds = [kind for _, kind in outcomes]
    assert kinds[0] == "ok" and kinds[-1] == "ok"
    assert {kind for kind in kinds[:down] if kind != "ok"}, kinds  # reads failed while the master was down
    assert max(seconds for seconds, _ in outcomes) < 2.5, outcomes  # never hung on the dead socket
    after = online.get_online_features(pairs)
    assert after.isna().sum().sum() > expected.isna().sum().sum()  # the restarted master came back empty
    materialize(cluster_ws, incremental=False, end=END)
    pd.testing.assert_frame_equal(online.get_online_features(pairs), expected)


def test_cli_names_the_cluster_on_a_wrong_password(cluster_ws, cluster):
    bad = cluster.url.replace(f":{PASSWORD}@", ":wrong-pw@")
    result = cli(cluster_ws, bad, "materialize", "--full")
    assert result.exit_code == 2, result.output
    assert masked(bad) in flat(result.output) and "wrong-pw" not in result.output


# ------------------------------------------------------------------ passwords, ACL users, TLS

def cli(ws: Workspace, online: str, *command: str):
    return CliRunner().invoke(app, ["--workspace", str(ws.root), "--online", online, "--repo", str(ws.repo_dir),
                                    *command])


def flat(output: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return "".join(output.split("\n"))


@pytest.fixture
def password_server(tmp_path):
    with RedisServer.running(tmp_path, ["--requirepass", PASSWORD], {"password": PASSWORD}) as server:
        yield server


def test_requirepass_server(lake, password_server):
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_server.port}/2"
    for wrong in (f"redis://:wrong-pw@127.0.0.1:{password_server.port}/2", f"redis://127.0.0.1:{password_server.port}/2"):
        result = cli(lake, wrong, "materialize", "--full")
        assert result.exit_code == 2 and "AuthenticationError" in result.output, result.output
        assert f"online store {masked(wrong)}:" in flat(result.output) and "Traceback" not in result.output
        assert "wrong-pw" not in result.output
    result = cli(lake, url, "materialize", "--full", "--end", END.isoformat())
    assert result.exit_code == 0, result.output
    assert masked(url) in flat(result.output) and PASSWORD not in result.output
    ws = on(lake, url)
    read_equals_feast(ws, RedisFeatureReader(ws), "retriever_online")
    assert password_server.client(db=2).dbsize() > 0


def test_tls_server_with_an_acl_user(lake, tmp_path, cert):
    port = free_port()
    tls_user = {"ssl": True, "ssl_ca_certs": str(cert[0]), "username": USER, "password": PASSWORD}
    with RedisServer.running(tmp_path, [*tls_args(port, cert), *ACL_USER], tls_user, port) as server:
        url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert[0]}"
        bad = url.replace(PASSWORD, "wrong-pw")
        result = cli(lake, bad, "materialize", "--full")
        assert result.exit_code == 2 and "AuthenticationError" in result.output, result.output
        assert masked(bad) in flat(result.output) and "wrong-pw" not in result.output
        ws = on(lake, url)
        materialize(ws, incremental=False, end=END)
        read_equals_feast(ws, RedisFeatureReader(ws), "retriever_online")
        assert server.client().dbsize() > 0


# ------------------------------------------------------------------ URLs

def test_online_urls_become_feasts_config_and_our_clients():
    cases = {
        "redis://127.0.0.1:6380/3": ("redis", "127.0.0.1:6380,db=3"),
        "redis://h": ("redis", "h:6379,db=0"),
        "redis://:p%40ss@h:1/0": ("redis", "h:1,db=0,password=p@ss"),
        "redis://alice:123@h:1/0": ("redis", 'h:1,db=0,username=alice,password="123"'),
        "rediss://alice:pw@h:1/2?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required":
            ("redis", "h:1,db=2,username=alice,password=pw,ssl=true,ssl_ca_certs=/ca.pem,ssl_cert_reqs=required"),
        "redis+cluster://a:1,b:2,c:3": ("redis_cluster", "a:1,b:2,c:3"),
        "rediss+cluster://alice:pw@a:1,b:2/0": ("redis_cluster", "a:1,b:2,username=alice,password=pw,ssl=true"),
    }
    for url, (redis_type, connection_string) in cases.items():
        cfg = online_store_config(url, Path("."))
        assert cfg["connection_string"] == connection_string
        assert RedisOnlineStoreConfig(**cfg).redis_type == redis_type
    client = redis_client(RedisOnlineStoreConfig(**online_store_config(
        "rediss://alice:123@h:1/2?ssl_ca_certs=/ca.pem&socket_timeout=0.5", Path("."))))
    kwargs = client.connection_pool.connection_kwargs  # made, not connected
    assert [kwargs[k] for k in ("host", "port", "db", "username", "password")] == ["h", 1, 2, "alice", "123"]
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["socket_timeout"] == 0.5
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


@pytest.mark.parametrize("url,reason", [
    ("memcached://h:1", "expected 'sqlite' or 'redis://"),
    ("redis://h:1/x", "database 'x'"),
    ("redis+cluster://a:1,b:2/1", "only 0 in a cluster"),
    ("redis://a:1,b:2", "redis+cluster://"),
    ("redis://h:99999", "port '99999'"),
    ("redis://h:1?ssl_ca_certs=/ca.pem", "needs TLS: rediss://"),
    ("redis://h:1?color=red", "unknown option 'color'"),
    ("redis://u:se,cret@h:1", "the password contains ','"),
    ("redis://u:se/cret@h:1/0", "percent-encode"),
    ("redis://u:se#cret@h:1/0", "percent-encode"),
    ("redis://[::1]:6379", "IPv6"),
])
def test_bad_online_urls_are_named_with_the_password_masked(url, reason):
    with pytest.raises(ConfigError) as err:
        Settings.load(online=url)
    message = str(err.value)
    assert reason in message and masked(url) in message and "\n" not in message
    assert "cret" not in message
