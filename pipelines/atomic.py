"""Atomic outputs: every file or directory unisup writes appears whole or not at all.

A writer works on a hidden temporary sibling (`.NAME.tmp-PID-RANDOM`, same directory, so the same
filesystem) and renames it over the final name only once it is complete and synced; a process killed
mid-write leaves the old version (or nothing) under the final name and a temporary that no reader
opens. The next write of the same name removes temporaries whose writer is dead.

Files are replaced with one rename (POSIX: readers see the old or the new file, never a mix).
Directories (a model, an index, a dataset with its lineage) cannot be renamed over a non-empty
directory, so the old one is first renamed aside: a crash between the two renames leaves the name
missing, which readers report as "not built yet", never a half-written directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TEMP_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` that names this process (for clean-up of dead writers)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to (a file, or a directory the caller
    creates); on a clean exit it is synced and renamed into place, on an exception removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp.name}")
        _sync_tree(tmp)
        _replace(tmp, path)
        _sync(path.parent)
    finally:
        _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """JSON of `obj` (json.dumps keyword arguments pass through), newline-terminated."""
    return write_text(path, json.dumps(obj, **dumps) + "\n")


def write_parquet(table: pa.Table, path: str | Path, **options: Any) -> Path:
    """pq.write_table, atomically (options pass through)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)
    return Path(path)


def remove_dead_temporaries(path: Path) -> None:
    """Remove temporaries of `path` left by writers that no longer run (killed mid-write)."""
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
        pid = stale.name.rsplit(TEMP_MARK, 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(stale)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(tmp: Path, path: Path) -> None:
    if not tmp.is_dir() or not path.exists():
        os.replace(tmp, path)
        return
    aside = temporary_sibling(path)
    os.replace(path, aside)
    os.replace(tmp, path)
    _remove(aside)


def _sync_tree(path: Path) -> None:
    """fsync a file, or every file of a directory and the directories themselves."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _sync(Path(root) / name)
            _sync(Path(root))
    else:
        _sync(path)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
