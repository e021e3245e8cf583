"""What a service process serves — one Bundle of loaded versions at a time — and switching it
without downtime.

A Bundle is everything a request reads: the retriever (encoder, index, blend) with its own
batcher, the /search stack, and the inspector's /compare over both. A request takes
`deployment.current` once and uses that bundle to the end, so every answer comes from one
consistent set of versions however a reload interleaves; the batcher belongs to the bundle, so a
batch never mixes encoders or indexes.

A reload loads the new Bundle beside the serving one (on a background thread: requests go on),
then switches the one reference. Requests in flight finish on the bundle they hold; the old bundle
is freed when the last of them lets go (only its description stays, in the history /metadata
shows), and its memory is handed back to the system (malloc_trim) so reloads do not ratchet RSS up.

Why a pointer file behind POST /admin/reload: BentoML runs `workers` processes behind one socket,
and a POST reaches one of them. The POST checks the names (4xx for one that does not exist, nothing
switched) and writes WORKSPACE/serving/current.json; every process, the one that took the POST
included, reads that small file every POLL_SECONDS and follows a change. So the POST answers at
once (202) instead of waiting out a load that takes tens of seconds on a busy 54k-item catalog
(past the service's 30 s request timeout), and GET /metadata says when each process switched, or
why it could not. The file also makes a switch outlive a restart (a rollback stays rolled back),
and an operator may write it by hand: {"index": VERSION, "ranker": NAME}.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import secrets
import threading
import weakref
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from pipelines.atomic import write_text
from pipelines.index.store import IndexNotFound, find_index, index_dirs
from pipelines.ranking.store import RankerFiles, UnknownRanker
from pipelines.settings import Settings
from serving.batcher import MicroBatcher
from serving.compare import Inspector
from serving.retriever import LoadedRetriever
from serving.schema import MAX_BATCH
from serving.search import LoadedSearch
from serving.store_watch import StoreWatch, every

logger = logging.getLogger("unisup.serving")

POINTER = Path("serving") / "current.json"  # in the workspace
POLL_SECONDS = 1.0
HISTORY = 10  # previous bundles described in /metadata


def release_memory() -> None:
    """Collect what a freed bundle left and return glibc's free heap pages to the system: without it
    a process's RSS stays at its peak (old and new bundle together) after every reload."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _ranker_name(ranker: str) -> str:
    """The NAME of NAME[@VARIANT], or ReloadRefused (400) for anything else."""
    name = ranker.split("@")[0]
    if not _plain(name):
        raise ReloadRefused(400, f"ranker {ranker!r} is not a ranker name (NAME[@VARIANT])")
    return name


def _plain(name: str) -> bool:
    """A bare directory name: no path, nothing hidden (what an index version or ranker name is)."""
    return name == Path(name).name and not name.startswith(".")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReloadRefused(Exception):
    """A switch that cannot be made, with the HTTP status to answer (4xx); nothing was switched."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Bundle:
    """One consistent set of loaded versions: retriever + its batcher, and the /search stack if its
    ranker loads (without one /retrieve still serves, and /search says why it cannot)."""

    def __init__(self, settings: Settings, index: Path, ranker: str):
        model_dir = settings.model_dir if index == settings.index else None  # MODEL_DIR goes with the configured index
        loading = settings.model_copy(update={"index": index, "ranker": ranker, "model_dir": model_dir})
        self.retriever = LoadedRetriever(loading)
        self.batcher = MicroBatcher(self.retriever.find, max_batch=MAX_BATCH, lanes=settings.lanes)
        self.ranker, self.searcher, self.search_error = ranker, None, None
        try:
            self.searcher = LoadedSearch(loading)
        except (LookupError, FileNotFoundError) as exc:
            self.search_error = str(exc)
        self.inspector = Inspector(loading, self.retriever, self.searcher, self.search_error)
        self.views = self.retriever.online.views | (self.searcher.stack.online.views if self.searcher else set())
        self.loaded_at = _now()

    def describe(self) -> dict:
        return {"index": self.retriever.versions.index, "ranker": self.ranker, "loaded_at": self.loaded_at,
                "versions": self.retriever.versions.model_dump(),
                "search_versions": self.searcher.versions.model_dump() if self.searcher else None,
                "search_error": self.search_error}


class Deployment:
    """The bundle this process serves (`current`), how it got there, and the online store's state."""

    def __init__(self, settings: Settings):
        self.settings, self.ws = settings, settings.as_workspace()
        self.pointer = self.ws.root / POINTER
        self._lock = threading.Lock()  # one load at a time: a POST and the pointer poll never race
        self.applied = self._pointer_text()  # the pointer text this process has followed (or tried to)
        self.current = self._load(json.loads(self.applied) if self.applied else {})
        self.reloads, self.previous, self.error = 0, deque(maxlen=HISTORY), None
        self._replaced: weakref.ref[Bundle] | None = None  # the bundle switched away from, until freed
        self.store = StoreWatch(self.ws, settings.store_check_seconds, settings.online_timeout)
        every(POLL_SECONDS, self.follow, "unisup-reload-watch")

    def reload(self, index: str | None = None, ranker: str | None = None) -> dict:
        """POST /admin/reload: check that the index and ranker exist, then point every process at them
        (the pointer file; each loads and switches on its next poll). Raises ReloadRefused (4xx) for
        a name that does not exist; nothing switches then."""
        choice = {"index": self._index(index).name,
                  "ranker": self._ranker(ranker) if ranker is not None else self.settings.ranker,
                  "id": secrets.token_hex(8)}  # a new id: every process reloads even if the names are the same
        write_text(self.pointer, json.dumps(choice) + "\n")
        return {"status": "accepted", **choice, "pointer": str(self.pointer),
                "follow": f"GET /metadata: deployment.index of each process within {POLL_SECONDS:g} s plus a load"}

    def follow(self) -> None:
        """The pointer poll: switch to what it names if it changed since this process last read it;
        hand a released bundle's memory back."""
        if self._replaced is not None and self._replaced() is None:  # the last request holding it is done
            self._replaced = None
            release_memory()
        text = self._pointer_text()
        if text is None or text == self.applied:
            return
        with self._lock:
            if text == self.applied:
                return
            self.applied = text  # tried once: a pointer that cannot load is reported, not retried every poll
            try:
                bundle = self._load(json.loads(text))
            except Exception as exc:  # noqa: BLE001 - any failure leaves the serving bundle in place
                self.error = f"{self.pointer}: {exc}"
                logger.error("not switching (%s); still serving index %s", self.error,
                             self.current.retriever.versions.index)
                return
            self._switch(bundle)

    def missing_views(self) -> list[str]:
        """Views the current bundle reads that the online store has lost (/readyz: not ready)."""
        return self.store.state.missing(self.current.views)

    def describe(self, bundle: Bundle) -> dict:
        """`bundle` (the one a caller read, so a concurrent switch cannot mix two) and this process's history."""
        return {"pid": os.getpid(), **bundle.describe(), "reloads": self.reloads,
                "previous": list(self.previous), "reload_error": self.error, "pointer": str(self.pointer),
                "admin_reload": self.settings.admin_reload}

    def _switch(self, bundle: Bundle) -> None:
        """One reference assignment, which every reader sees whole; the old bundle lives on only in the
        requests that hold it."""
        old, self.current = self.current, bundle
        self._replaced = weakref.ref(old)
        self.reloads += 1
        self.previous.appendleft({**old.describe(), "replaced_at": bundle.loaded_at})
        self.error = None
        logger.warning("switched to index %s, ranker %s (was %s, %s)", bundle.retriever.versions.index,
                       bundle.ranker, old.retriever.versions.index, old.ranker)

    def _load(self, choice: dict) -> Bundle:
        """A bundle of choice["index"] (default: the configured index, else the newest) and choice["ranker"]
        (default: the configured one)."""
        index = self._index(choice.get("index"))
        ranker = choice.get("ranker") or self.settings.ranker
        _ranker_name(ranker)
        try:
            return Bundle(self.settings, index, ranker)
        except (ValueError, LookupError, OSError) as exc:
            raise ReloadRefused(422, f"index {index.name!r} cannot be served: {type(exc).__name__}: {exc}") from exc

    def _index(self, version: str | None) -> Path:
        if version is None:
            try:
                return self.settings.index or find_index(self.ws.indexes_dir)
            except IndexNotFound as exc:
                raise ReloadRefused(404, str(exc)) from None
        if not _plain(version):
            raise ReloadRefused(400, f"index {version!r} is not an index version (a directory name under "
                                     f"{self.ws.indexes_dir})")
        known = [p.name for p in index_dirs(self.ws.indexes_dir)]
        if version not in known:
            raise ReloadRefused(404, f"no index version {version!r} in {self.ws.indexes_dir} "
                                     f"(there are: {', '.join(known) or 'none'})")
        return self.ws.indexes_dir / version

    def _ranker(self, ranker: str) -> str:
        """`ranker` if it is a trained ranker's NAME[@VARIANT] in this workspace, else ReloadRefused."""
        try:
            RankerFiles.of(self.ws, _ranker_name(ranker)).require()
        except UnknownRanker as exc:
            raise ReloadRefused(404, str(exc)) from None
        return ranker

    def _pointer_text(self) -> str | None:
        try:
            return self.pointer.read_text()
        except FileNotFoundError:
            return None
