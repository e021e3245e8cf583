"""Shared fixtures: a private redis-server per session and Feast workspaces in temp dirs.

Nothing here touches the machine's shared Redis on 6379 or the project's own workspace.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipelines.signals.synthetic import teacher_labels as synthetic_teacher_labels
from pipelines.workspace import DEFAULT_REPO, Workspace

# Yesterday midnight: recent enough that no view's TTL has expired "as of now" (consistency
# compares against now), old enough that materializing up to AS_OF + 1h is in the past.
AS_OF = pd.Timestamp.now(tz="UTC").normalize() - pd.Timedelta(days=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server bound to loopback on a free port; can be stopped (or killed) and
    restarted with the same command line. `args` add to it (TLS, a password, cluster mode), and
    `client_kwargs` are what a client then needs to reach it."""

    def __init__(self, workdir: Path, args: Sequence[str] = (), client_kwargs: dict | None = None,
                 port: int | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server not found: `apt-get install redis-server` (make setup does this)")
        self.port = port or free_port()
        self.workdir, self.args, self.client_kwargs = workdir, list(args), client_kwargs or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **self.client_kwargs, **kwargs)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = self.client(retry=Retry(NoBackoff(), 0))
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as a crashed server."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        self.client().flushall()

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path, *args: str, **kwargs) -> Iterator[RedisServer]:
        """Started for the `with` block, stopped after it even if the block fails (fixtures use this)."""
        server = cls(workdir, *args, **kwargs)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with RedisServer.running(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def online(request, redis_server) -> str:
    """Each test using this runs once per online store: SQLite, then the private Redis."""
    if request.param == "redis":
        redis_server.flush()
        return redis_server.url
    return "sqlite"


def copy_repo(dst: Path) -> Path:
    """A private copy of feature_repo/, so a test may add a signal without touching the project."""
    shutil.copytree(DEFAULT_REPO, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.fixture
def make_workspace(tmp_path):
    """Factory: a Workspace in a temp dir with its own copy of the feature repo."""

    def make(online: str = "sqlite", name: str = "ws") -> Workspace:
        repo = copy_repo(tmp_path / f"{name}_repo")
        return Workspace(root=tmp_path / name, online=online, repo_dir=repo)

    return make


# Plumbing tests (apply, materialize, datasets, online reads) swap the teacher cascade for the
# synthetic producer of the same table: fitting a cross-encoder per workspace would triple the
# suite's time and test nothing new there. tests/test_teacher.py runs the real producer.
PLUMBING_PRODUCERS = {"teacher_labels": synthetic_teacher_labels}


def prepare(ws: Workspace, seed: int = 0, items: int = 400, queries: int = 80) -> Workspace:
    """A small synthetic lake, every registered signal produced (quick profile, synthetic
    teacher), and the repo applied."""
    from pipelines.features.produce import build_signals
    from pipelines.features.repo import apply
    from pipelines.ingest.synthetic import generate_synthetic
    from pipelines.signals.spec import SignalContext

    generate_synthetic(ws.lake, n_items=items, n_queries=queries, seed=seed, as_of=AS_OF)
    build_signals(ws, SignalContext(lake=ws.lake, as_of=AS_OF, seed=seed, quick=True),
                  producers=PLUMBING_PRODUCERS)
    apply(ws)
    return ws


@pytest.fixture
def prepared(make_workspace, online) -> Workspace:
    """An applied workspace with data, once per online store (SQLite and private Redis)."""
    return prepare(make_workspace(online=online))


def reference_ndcg10(relevance_in_ranked_order, all_relevance) -> float:
    """NDCG@10 written from the definition, for tests to check pipelines.metrics' users against (not
    through pipelines.metrics or ranx): gain = relevance - 1 (an unjudged item has relevance 1, gain
    0), discount log2(rank + 1), ideal from all the query's relevances. A relevance is a mean of
    three or four raters written with two decimals (2.33 for 7/3), so it is read as the exact mean:
    the nearest twelfth."""
    def gain(r) -> np.ndarray:
        return np.round(np.asarray(r, np.float64) * 12) / 12 - 1.0

    top = gain(relevance_in_ranked_order)[:10]
    ideal = np.sort(gain(all_relevance))[::-1][:10]
    discount = 1.0 / np.log2(np.arange(2, 12))
    return float((top * discount[:len(top)]).sum() / (ideal * discount[:len(ideal)]).sum())


def poison_dev_judgments(lake, seed: int = 1) -> int:
    """Every dev judgment of `lake` becomes 'exact match' and each dev query gains a judged pair;
    returns the rows changed. A producer that reads no dev judgment writes the same table after."""
    queries, judgments, items = lake.read("queries"), lake.read("judgments"), lake.read("items")
    dev = set(queries.loc[queries["split"] == "dev", "query_id"])
    is_dev = judgments["query_id"].isin(dev)
    judgments.loc[is_dev, "relevance"] = 3.0
    rng = np.random.default_rng(seed)
    extra = pd.DataFrame({"query_id": sorted(dev)})
    extra["item_id"] = rng.choice(items["item_id"].to_numpy(), size=len(extra))
    extra = extra.merge(judgments[["query_id", "item_id"]], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].drop(columns="_merge")
    extra = extra.assign(judgment_id=[f"poison-{i}" for i in range(len(extra))], relevance=3.0,
                         event_timestamp=judgments["event_timestamp"].iloc[0])
    lake.write("judgments", pd.concat([judgments, extra], ignore_index=True))
    return int(is_dev.sum()) + len(extra)
