"""Helpers shared by the benchmarks: a private redis-server, per-measurement subprocesses with
their own peak RSS, latency summaries, JSON results and a rich table.

Benchmarks never touch the machine's shared Redis on 6379: each starts its own server on a
free loopback port and stops it on exit. Each measured path runs in its own child process so
the peak RSS reported (ru_maxrss of exactly that child, via os.wait4) belongs to that path.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throwaway redis-server on loopback (no persistence); use as a context manager."""

    def __init__(self, workdir: Path | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.binary, self.port = binary, free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_redis_"))
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(port=self.port, db=db)

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(200):
            if self.proc.poll() is not None:
                break
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def cpu_seconds(self) -> float:
        """CPU the server has used so far (user + sys), to split a run's cost by process."""
        info = self.client().info("cpu")
        return info["used_cpu_user"] + info["used_cpu_sys"]

    def used_memory_mb(self) -> float:
        return self.client().info("memory")["used_memory"] / 2**20


def run_child(script: Path, args: Sequence[str], timeout: float = 1800) -> dict:
    """Run `script --child ARGS` in a fresh interpreter; its last stdout line (JSON) plus its own
    peak RSS. Reaped with wait4 only (Popen.wait would reap first and lose the rusage)."""
    sink = tempfile.TemporaryFile()  # noqa: SIM115 - a file, not a pipe: a chatty child never blocks
    proc = subprocess.Popen([sys.executable, str(script), "--child", *args], stdout=sink,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return {"error": f"timed out after {timeout:.0f}s", "peak_rss_mb": usage.ru_maxrss / 1024}
        time.sleep(0.05)
    sink.seek(0)
    out = sink.read().decode(errors="replace")
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "peak_rss_mb": usage.ru_maxrss / 1024,
                "tail": out[-2000:]}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports KiB
    return result


def cpu_seconds() -> float:
    """This process's CPU time so far (user + sys)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def latency_summary(seconds: Iterable[float]) -> dict:
    """p50/p90/p99/mean in milliseconds of per-call wall times."""
    ms = np.asarray(list(seconds)) * 1000
    return {"calls": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3)}


def machine() -> dict:
    """Where the figures come from; load average matters on a shared 2-core box."""
    import feast
    import redis

    server = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "feast": feast.__version__,
            "redis_py": redis.__version__, "redis_server": server, "platform": platform.platform()}


def write_json(path: Path | str, data: dict) -> Path:
    """Write results; a bare name goes to benchmarks/results/<name>.json."""
    path = Path(path) if isinstance(path, Path) or "/" in str(path) else RESULTS_DIR / f"{path}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=max(Console().width, 140)).print(table)
