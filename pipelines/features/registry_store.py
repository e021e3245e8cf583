"""Feast's file registry, written atomically.

Feast's FileRegistryStore truncates registry.db and writes the new proto in place, so a process
killed mid-apply leaves an empty or truncated registry that every later command fails to parse.
This store writes the same bytes through pipelines.atomic (temporary sibling, fsync, rename):
readers see the previous registry or the new one. Workspaces name it in feature_store.yaml
(`registry_store_type`), so plain Feast clients opening a workspace use it too.
"""

from __future__ import annotations

import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

from pipelines.atomic import write_bytes
from pipelines.compat import require

require("feast")  # overrides FileRegistryStore._write_registry and reads its _filepath (see compat)


class AtomicFileRegistryStore(FileRegistryStore):
    """FileRegistryStore whose every write replaces the file in one rename."""

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        write_bytes(self._filepath, registry_proto.SerializeToString())
