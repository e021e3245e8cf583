"""One writer per workspace: an advisory lock every writing `unisup` command holds while it runs.

Two commands writing one workspace at once (a `signals build` while `materialize` reads half the
new tables, two trainings registering into one models/ folder) leave a state neither run would.
The lock is `flock` on WORKSPACE/.unisup.lock, which the kernel releases when its holder exits,
however it exits: a lock left by a killed process is simply taken by the next command. The file
also names its holder (command, pid, start time), so a second writer fails at once with a message
saying who holds the workspace. Readers (`serve`, `consistency`) take no lock: every file they
read is replaced whole (pipelines.atomic).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".unisup.lock"


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace's writer lock."""


@contextlib.contextmanager
def writer_lock(root: str | Path, command: str) -> Iterator[dict]:
    """Hold `root`'s writer lock for the block; raise WorkspaceBusy at once if another process
    holds it. Yields the holder record written into the lock file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(busy_message(root, _read(fd))) from None
        holder = {"command": command, "pid": os.getpid(), "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield holder
    finally:
        os.close(fd)  # releases the lock


def busy_message(root: Path, holder: dict) -> str:
    return (f"workspace {root} is being written by `{holder.get('command', '?')}` (pid {holder.get('pid', '?')}, "
            f"since {holder.get('since', '?')}); wait for it to finish, or stop that process and run this again")


def _read(fd: int) -> dict:
    """The holder record; a partly written one (the holder is starting) reads as unknown fields."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except json.JSONDecodeError:
        return {}
