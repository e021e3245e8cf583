"""`UNISUP_OFFLINE=ray:HOST:PORT`: `dataset build` joined to a running Ray cluster.

The cluster is a real one started by the test (`ray start --head`, its own temp dir and auth token,
1 CPU), not the local Ray a command starts: the CLI joins it as a driver, Feast's Ray store and our
partitioned join run on its workers, and the set must equal the duckdb engine's frame for frame;
its lineage names the cluster's GCS address. Ray Client (`ray://`) is refused with a message,
since Ray Data does not run over it (pipelines.workspace.ray_address).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.features.entities import sample_entities
from pipelines.workspace import ConfigError, Workspace, offline_store_config

from conftest import copy_repo, free_port, prepare

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster in its own process group, with token authentication (Ray's default
    once a token exists) on a token of its own; yields its GCS address and the environment a driver
    needs to join it. Ray binds a head to the node's address, not loopback, whatever it is told (ray start
    --node-ip-address=127.0.0.1 is resolved to it)."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # socket paths < 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    head = subprocess.Popen([BIN / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--object-store-memory=200000000", "--include-dashboard=false", f"--temp-dir={temp}",
                             "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([BIN / "ray", "status", f"--address={address}"], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_dataset_build_on_a_ray_cluster_equals_duckdb(tmp_path, cluster):
    """The CLI in its own process, as a user runs it: Ray's token loader is per process."""
    address, env = cluster
    ws = prepare(Workspace(root=tmp_path / "ws", repo_dir=copy_repo(tmp_path / "repo")))
    sample_entities(ws, 200, seed=0).to_parquet(tmp_path / "entities.parquet")

    def build(out: str, offline: str) -> dict:
        result = subprocess.run([BIN / "unisup", "--workspace", ws.root, "--repo", ws.repo_dir, "dataset", "build",
                                 "--entities", tmp_path / "entities.parquet", "--out", tmp_path / out],
                                env={**env, "UNISUP_OFFLINE": offline}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads((tmp_path / out / "lineage.json").read_text())

    duck = build("duckdb", "duckdb")
    on_cluster = build("cluster", f"ray:{address}")
    port = address.rpartition(":")[2]  # Ray names the head by the node's address, not 127.0.0.1
    assert on_cluster["engine"] == "ray" and on_cluster["ray_gcs_address"].endswith(f":{port}")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cluster" / "dataset.parquet"),
                                  pd.read_parquet(tmp_path / "duckdb" / "dataset.parquet"))
    assert duck["rows"] == on_cluster["rows"] == 200


@pytest.mark.parametrize("offline, message", [
    ("ray://10.0.0.1:10001", "Ray Client (ray://) cannot run Ray Data"),
    ("ray:10.0.0.1", "expected one of duckdb, ray, ray:HOST:PORT, ray:auto"),
    ("spark", "expected one of duckdb, ray, ray:HOST:PORT, ray:auto"),
])
def test_offline_settings_that_cannot_work_are_refused(tmp_path, offline, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        offline_store_config(offline, tmp_path)
