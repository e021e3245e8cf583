"""get_online_features for entity rows (query, item pairs and a service's other keys) from Feast's
Redis store, in one round trip.

Feast's SDK spends most of a ~8 ms lookup of 100 pairs in Python around its single pipeline:
one HMGET per entity per view, proto objects per value, a response proto, then pandas. Here
the layout is planned once per service: views sharing join keys share one Redis hash, so one
HMGET per distinct entity fetches all their fields (pair views together; items, queries, users,
(user, brand) entities each deduplicated); commands are prebuilt bytes, replies are parsed by
hiredis and decoded straight off the wire. On a Redis Cluster the HMGETs split by the master
owning each key's slot and go to all masters at once (redis_pipe.NodePipes). The rest (planning
per service, on-demand views, assembly, no TTL applied, as in Feast's read) is
service_reader.ServiceReader's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from feast import FeatureStore
from redis.exceptions import AskError

from pipelines.features import redis_wire as wire
from pipelines.features.redis_pipe import NodePipes, RedisConnector
from pipelines.features.service_reader import EntityGroup, ServiceReader, encoded_id
from pipelines.workspace import Workspace


def _apply(encode: Callable[[object], bytes], value: object) -> bytes:
    return encode(value)


@dataclass(frozen=True)
class _Group:
    """Views sharing one Redis hash (same join keys): one HMGET fetches all their fields."""

    join_keys: tuple[str, ...]  # sorted, as serialize_entity_key orders them
    columns: list[tuple[tuple[str, str], object]]  # ((view, feature), value type) per field
    command_tail: bytes  # the HMGET field names, RESP-encoded once
    header: bytes
    prefix: bytes
    getter: Callable  # an entity row -> its value (one join key) or tuple of values
    encoders: tuple[Callable[[object], bytes], ...] | None  # per join key; None: all strings (encoded_id)


def _plan(group: EntityGroup) -> _Group:
    """One HMGET per entity of the group: its fields RESP-encoded once, for every request."""
    columns = [((view, feat), vt) for view, feats in group.views.items() for feat, vt in feats.items()]
    return _Group(group.join_keys, columns,
                  command_tail=b"".join(wire.resp_bulk(wire.field_name(view, feat)) for (view, feat), _ in columns),
                  header=b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(columns)), prefix=group.prefix,
                  getter=itemgetter(*group.positions), encoders=None if group.strings else group.encoders)


class RedisFeatureReader(ServiceReader):
    """get_online_features for entity rows (tuples in `keys` order) in one pipelined Redis round trip."""

    def __init__(self, ws: Workspace, service_name: str = "retriever_online",
                 store: FeatureStore | None = None):
        super().__init__(ws, service_name, store)
        self.connector = RedisConnector(self.store.config.online_store)
        self.groups = [_plan(g) for g in self.entity_groups]

    def _fetch(self, rows: Sequence[tuple]) -> dict[tuple[str, str], list]:
        """One HMGET per distinct entity of each hash group, all in one pipelined round trip (per
        cluster node, all nodes at once)."""
        project = self.project.encode()
        plan, keys, commands = [], [], []
        for g in self.groups:
            slots: dict = {}
            index = [slots.setdefault(g.getter(r), len(slots)) for r in rows]
            single = len(g.join_keys) == 1
            for ent in slots:
                ids = (ent,) if single else ent
                if g.encoders is None:
                    key = b"".join([g.prefix, *map(encoded_id, ids), project])
                else:
                    key = b"".join([g.prefix, *map(_apply, g.encoders, ids), project])
                keys.append(key)
                commands.append(b"%s$%d\r\n%s\r\n%s" % (g.header, len(key), key, g.command_tail))
            plan.append((g, len(slots), index))
        replies = self._round_trip(keys, commands)
        values: dict[tuple[str, str], list] = {}
        offset = 0
        for g, n, index in plan:
            block = replies[offset:offset + n]
            offset += n
            for j, (ref, vt) in enumerate(g.columns):
                decoded = [wire.decode_value(r[j], vt) for r in block]
                values[ref] = [decoded[i] for i in index]
        return values

    def _round_trip(self, keys: list[bytes], commands: list[bytes], redirected: bool = False) -> list:
        """Each command's reply, in order. After a failure the next read starts from a new client (a
        cluster's fresh slot map); a cluster's redirect (MOVED / ASK: slots moved, a replica took
        over) is retried once at once on the new map."""
        try:
            return self._send(keys, commands)
        except Exception as exc:
            self.connector.reset()
            if isinstance(exc, AskError) and not redirected:  # MovedError is an AskError too
                return self._round_trip(keys, commands, redirected=True)
            raise

    def _send(self, keys: list[bytes], commands: list[bytes]) -> list:
        replies: list = [None] * len(commands)
        with NodePipes(self.connector.client) as pipes:
            routes = pipes.route(keys)
            for pipe, at in routes:
                pipe.send(b"".join(commands if at is None else [commands[i] for i in at]))
            for pipe, at in routes:
                if at is None:
                    return pipe.read(len(commands))
                for i, reply in zip(at, pipe.read(len(at))):
                    replies[i] = reply
        return replies
