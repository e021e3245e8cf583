"""Raw RESP pipes over redis-py connections, routed to the node holding each key, and clients
built the way Feast builds them.

redis-py's pipeline packs every command and parses every reply in Python, several µs each; the
fast paths instead send one prebuilt buffer per batch and node (redis_wire) and let hiredis parse
the replies in C, read off the connection's socket (pipelines.compat.recv_into), while connection
setup (AUTH, SELECT, TLS) stays redis-py's. On a Redis Cluster the keys of a batch are split by the
master owning their hash slot (redis-py's RedisCluster slot map and node connections), one pipe per
master: the same commands and bytes as on one server, never a transaction (a cluster has none
across slots, and Feast's writer uses none either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import hiredis
import numpy as np
import pyarrow as pa
import redis
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, AuthenticationError, MovedError
from redis.retry import Retry

from pipelines import compat

Client = redis.Redis | RedisCluster


def redis_client(cfg: RedisOnlineStoreConfig, timeout: float | None = None) -> Client:
    """A client on a Feast Redis online store, from its connection string as Feast builds it: redis.Redis
    on the first node, or RedisCluster starting from every node (it reads the slot map when made).
    With `timeout`, a command fails after that many seconds and is not retried; without, a refused
    login is not retried either (RetryUnlessRefused)."""
    if cfg.type != "redis" or cfg.redis_type not in ("redis", "redis_cluster"):
        raise ValueError(f"online store {cfg.type}/{getattr(cfg, 'redis_type', '')}: need redis or redis_cluster")
    nodes, params = compat.redis_connection(cfg.connection_string)
    if timeout:
        params.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if cfg.redis_type == "redis_cluster":  # its node connections never retry; the cluster client does, by itself
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **params)
    (host, port), *_ = nodes
    return redis.Redis(host=host, port=port, **{"retry": RetryUnlessRefused(), **params})


class RetryUnlessRefused(Retry):
    """redis-py's default retry of a plain client (3 times, exponential backoff up to 10 s), except
    for a refused login (wrong password, unknown user): waiting cannot make it right, and a user
    who mistyped a password should hear at once, not after seconds of backoff."""

    def __init__(self) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=1, cap=10), 3)

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            return not isinstance(error, AuthenticationError) and (is_retryable is None or is_retryable(error))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


class RedisConnector:
    """The client of a Feast Redis online store, made on first use and remade after `reset`.

    A cluster client reads the slot map when made, so making it lazily lets a service start (and
    answer degraded) while the store is down, and remaking it after a failure picks up a changed
    map (a failed-over or restarted master)."""

    def __init__(self, cfg: RedisOnlineStoreConfig, timeout: float | None = None):
        self.cfg, self.timeout = cfg, timeout
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = redis_client(self.cfg, self.timeout)
        return self._client

    def fail_fast(self, timeout: float) -> None:
        """Commands fail after `timeout` seconds, without retries, from the next one on."""
        self.timeout = timeout
        self.reset()

    def reset(self) -> None:
        """The next use makes a new client; the old one's connections close once no read holds them
        (closing them here would fail other threads' reads in flight)."""
        self._client = None


class RespPipe:
    """A pooled redis-py connection used as a raw pipe: send prebuilt RESP, read replies in
    order (so several batches may be in flight). On any error the connection is dropped."""

    def __init__(self, client: redis.Redis):
        self._pool = client.connection_pool
        self._conn = self._pool.get_connection()
        self._reader = hiredis.Reader()
        self._buffer = bytearray(1 << 18)  # reused: recv(n) would allocate n bytes per call
        self._ok = True

    def send(self, data: bytes | memoryview) -> None:
        self._conn.send_packed_command([data], check_health=False)

    def read(self, n: int, keep: bool = True) -> list:
        """The next n replies in order (kept only if `keep`); a Redis error reply raises."""
        out: list = []
        gets, got = self._reader.gets, 0
        while got < n:
            reply = gets()
            if reply is False:
                size = compat.recv_into(self._conn, self._buffer)
                if not size:
                    self._ok = False
                    raise redis.ConnectionError("redis closed the connection mid-reply")
                self._reader.feed(self._buffer, 0, size)
                continue
            if reply.__class__ is hiredis.ReplyError:
                self._ok = False
                raise _reply_error(str(reply))
            got += 1
            if keep:
                out.append(reply)
        return out

    def close(self) -> None:
        """Return the connection to the pool, or drop it if replies may still be unread."""
        if not self._ok or self._reader.has_data():
            self._conn.disconnect()
        self._pool.release(self._conn)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        self._ok = self._ok and exc_type is None
        self.close()


def _reply_error(text: str) -> redis.ResponseError:
    """redis-py's exception for an error reply; a cluster's redirects as its MovedError / AskError."""
    kind, _, rest = text.partition(" ")
    redirect = {"MOVED": MovedError, "ASK": AskError}.get(kind)
    return redirect(rest) if redirect else redis.ResponseError(text)


class NodePipes:
    """RespPipes to the nodes holding given keys: the one server, or per key the cluster master owning
    its hash slot in the client's slot map (CRC16 of the key or its {hash tag}, as redis-py routes).
    One pipe per node, opened on first use; a node's replies come back in the order its commands
    went out. All close together; after an error, with their connections dropped."""

    def __init__(self, client: Client):
        self.client = client
        self.pipes: dict[str, RespPipe] = {}

    def route(self, keys: Sequence[bytes] | pa.BinaryArray) -> list[tuple[RespPipe, np.ndarray | None]]:
        """(pipe, positions of the keys its node holds) per node; positions None: all of them."""
        if not isinstance(self.client, RedisCluster):
            return [(self._pipe("", self.client), None)]
        nodes: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, key in enumerate(keys.to_pylist() if isinstance(keys, pa.Array) else keys):
            node = self.client.get_node_from_key(key)
            nodes.setdefault(node.name, (node, []))[1].append(i)
        return [(self._pipe(name, self.client.get_redis_connection(node)), np.array(positions))
                for name, (node, positions) in nodes.items()]

    def _pipe(self, name: str, client: redis.Redis) -> RespPipe:
        if name not in self.pipes:
            self.pipes[name] = RespPipe(client)
        return self.pipes[name]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        for pipe in self.pipes.values():
            pipe.__exit__(exc_type, *exc)
