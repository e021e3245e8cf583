"""A raw RESP pipe over a redis-py connection, and clients built the way Feast builds them.

redis-py's pipeline packs every command and parses every reply in Python, several µs each; the
fast paths instead send one prebuilt buffer per batch (redis_wire) and let hiredis parse the
replies in C, read off the connection's socket (pipelines.compat.recv_into), while connection
setup (AUTH, SELECT, TLS) stays redis-py's.
"""

from __future__ import annotations

from typing import Self

import hiredis
import redis
from feast.infra.online_stores.redis import RedisOnlineStoreConfig

from pipelines import compat


def redis_client(cfg: RedisOnlineStoreConfig) -> redis.Redis:
    """A client on a Feast Redis online store, from its connection string parsed as Feast does."""
    if cfg.type != "redis" or cfg.redis_type != "redis":
        raise ValueError(f"online store {cfg.type}/{getattr(cfg, 'redis_type', '')}: need plain redis")
    return redis.Redis(**compat.redis_kwargs(cfg.connection_string))


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
                raise redis.ResponseError(str(reply))
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
