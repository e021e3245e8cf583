"""The online store's materialization watermark, checked in the background of each service process.

A store that comes back empty (Redis restarted without persistence, flushed, evicting) answers
every lookup with nulls and no error, so the per-request failure handling never notices. Each
process checks the watermark (pipelines/features/watermark.py: one read plus one probe of a few
sample keys) every `store_check_seconds` on a daemon thread, never per request; requests, /readyz
and /metadata read the last result. The first check runs before the service reports ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pipelines.features.repo import feature_store
from pipelines.features.watermark import StoreCheck, check, online_marks
from pipelines.workspace import Workspace

logger = logging.getLogger("unisup.serving")


def every(seconds: float, run: Callable[[], object], name: str) -> threading.Thread:
    """Call `run` every `seconds` on a daemon thread for the life of the process; an exception is
    logged and the next call still comes."""
    def loop() -> None:
        while True:
            time.sleep(seconds)
            try:
                run()
            except Exception:  # noqa: BLE001 - a background check must outlive any one failure
                logger.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class StoreWatch:
    """`state`: the last StoreCheck of the workspace's online store; changes are logged once each."""

    def __init__(self, ws: Workspace, interval: float, timeout: float):
        self.store = feature_store(ws)
        self.marks = online_marks(self.store, timeout)
        self.state = self._check()
        self._log(None, self.state)
        every(interval, self.refresh, "unisup-store-watch")

    def refresh(self) -> None:
        before, self.state = self.state, self._check()
        self._log(before, self.state)

    def _check(self) -> StoreCheck:
        return check(self.marks, self.store.list_feature_views(), datetime.now(UTC))  # the registry, re-read

    @staticmethod
    def _log(before: StoreCheck | None, now: StoreCheck) -> None:
        if now.error or (before and (now.missing(), now.stale()) == (before.missing(), before.stale())):
            return  # unreadable store: the lookups log it; unchanged: logged already
        if now.missing():
            logger.error("online store is missing views %s: their features are null, answers degraded, not ready: "
                         "%s", now.missing(), {v: now.views[v].reason for v in now.missing()})
        if now.stale():
            logger.warning("online store has stale views %s: %s", now.stale(),
                           {v: now.views[v].reason for v in now.stale()})
        if before and not now.missing() and not now.stale():
            logger.warning("online store holds every view again")
