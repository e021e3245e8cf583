"""Atomic outputs and the workspace's writer lock, against real processes killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.atomic import TEMP_MARK, atomic_path, write_parquet, write_text
from pipelines.workspace import PROJECT_ROOT
from pipelines.workspace_lock import LOCK_FILE, WorkspaceBusy, writer_lock

ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1"}


def child(code: str) -> subprocess.Popen:
    """A Python child running `code`; it prints READY when it reaches its critical section."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, env=ENV, text=True)


def wait_ready(proc: subprocess.Popen) -> None:
    assert proc.stdout.readline().strip() == "READY", "child died before its critical section"


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


def test_file_is_old_or_new_never_partial(tmp_path):
    """A writer killed while its temporary holds half the bytes leaves the old file intact; the next
    write of the name clears the dead writer's temporary."""
    target = tmp_path / "table.parquet"
    old = pa.table({"x": list(range(10))})
    write_parquet(old, target)
    proc = child(f"""
        import time
        from pipelines.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"PAR1 half a file")
            print("READY", flush=True)
            time.sleep(60)
    """)
    wait_ready(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pq.read_table(target).equals(old)
    assert len(temporaries(tmp_path)) == 1  # left behind by the killed writer, invisible to readers
    new = pa.table({"x": [1, 2]})
    write_parquet(new, target)
    assert pq.read_table(target).equals(new)
    assert temporaries(tmp_path) == []


def test_failed_writer_leaves_nothing(tmp_path):
    target = tmp_path / "notes.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("producer failed")
    assert target.read_text() == "old"
    assert temporaries(tmp_path) == []


def test_directory_is_replaced_whole(tmp_path):
    """A directory output (model, index) is replaced as a unit: no file of the old one survives."""
    target = tmp_path / "model"
    for version, files in (("v1", ["a", "b"]), ("v2", ["c"])):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            for name in files:
                (tmp / name).write_text(version)
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert (target / "c").read_text() == "v2"
    assert temporaries(tmp_path) == []


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    holder = child(f"""
        import time
        from pipelines.workspace_lock import writer_lock
        with writer_lock({str(tmp_path)!r}, "unisup signals build --quick"):
            print("READY", flush=True)
            time.sleep(60)
    """)
    try:
        wait_ready(holder)
        t = time.monotonic()
        with pytest.raises(WorkspaceBusy) as busy, writer_lock(tmp_path, "unisup materialize"):
            pass
        assert time.monotonic() - t < 1.0
        assert "unisup signals build --quick" in str(busy.value) and f"pid {holder.pid}" in str(busy.value)
        cli = subprocess.run([sys.executable, "-m", "pipelines.cli", "--workspace", str(tmp_path), "apply"],
                             capture_output=True, text=True, env=ENV, timeout=120)
        assert cli.returncode == 2
        assert f"pid {holder.pid}" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    holder = child(f"""
        import time
        from pipelines.workspace_lock import writer_lock
        with writer_lock({str(tmp_path)!r}, "unisup train"):
            print("READY", flush=True)
            time.sleep(60)
    """)
    wait_ready(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f'"pid": {holder.pid}' in (tmp_path / LOCK_FILE).read_text()  # the dead holder's record is still there
    with writer_lock(tmp_path, "unisup apply") as record:
        assert record["pid"] == os.getpid()
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()
