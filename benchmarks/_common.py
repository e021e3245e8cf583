"""Helpers shared by the benchmarks: a private redis-server or Redis Cluster, per-measurement
subprocesses with their own peak RSS, latency summaries, JSON results, a rich table and the exit status.

Benchmarks never touch the machine's shared Redis on 6379: each starts its own server on a
free loopback port and stops it on exit, unless --redis names one to use instead (the tests pass
theirs); a cluster is always private (PrivateRedisCluster).

Each measured path runs in its own child process so the peak RSS reported belongs to that
path: the child's own VmHWM, which it writes at exit. (Not os.wait4's ru_maxrss: Linux carries the
parent's high-water mark across the vfork + exec that starts the child, so every child would report
at least the parent's peak; ru_maxrss is only the fallback for a child killed before it wrote.)
A child that fails leaves its error and the last lines of its stderr in the row, and the script
exits 1.

Every script takes --quick (a smoke run on tiny data, every path including plain Feast) and --out;
a quick run writes its JSON to $TMPDIR/unisup-bench-quick/ unless --out says otherwise, and never
under benchmarks/results/, which holds the committed figures. Where a full run starts a child per
path, a quick run calls that child's function in the script's own process (run_path): a fresh
interpreter spends 12-14 s of CPU importing Feast (typeguard instruments its classes at import),
several times the tiny measurement itself. Its rows have no peak RSS.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
STDERR_LINES = 20  # lines of a failed child's stderr kept in its row
QUICK_DIR = Path(tempfile.gettempdir()) / "unisup-bench-quick"  # where --quick writes its JSON by default
PEAK_FILE_ENV = "UNISUP_BENCH_PEAK_FILE"  # run_child -> child: where to write its peak RSS at exit
LOAD_AT_START = os.getloadavg()  # before the script's own work: what else the machine was doing


def _write_peak_rss(path: str) -> None:
    """This process's peak resident set (VmHWM, KiB) into `path`."""
    found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if found:
        Path(path).write_text(found.group(1))


# popped, so only the child run_child started writes it, not processes that child starts
if _peak_file := os.environ.pop(PEAK_FILE_ENV, None):
    atexit.register(_write_peak_rss, _peak_file)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held together while chosen, so none comes back twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class PrivateRedis:
    """A throwaway redis-server on loopback (no persistence); use as a context manager. `args` add
    to its command line (cluster mode: PrivateRedisCluster)."""

    def __init__(self, workdir: Path | None = None, args: Sequence[str] = (), port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self.binary, self.host, self.port = binary, "127.0.0.1", port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_redis_"))
        self.args = list(args)
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db)

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        for _ in range(200):
            if self.proc.poll() is not None:
                break
            try:  # no retries of its own: redis-py's default backoff would wait a second per attempt
                redis.Redis(port=self.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).ping()
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


class PrivateRedisCluster:
    """A throwaway Redis Cluster on loopback: `masters` PrivateRedis nodes in cluster mode, no
    replicas, joined by `redis-cli --cluster create` (tests/test_redis_cluster.py's Cluster without
    TLS or ACL); use as a context manager. CPU and memory are summed over the masters."""

    def __init__(self, workdir: Path | None = None, masters: int = 3):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_redis_cluster_"))
        ports = free_ports(2 * masters)  # each master's client port and cluster bus port
        self.nodes = [PrivateRedis(self.workdir / f"node{i}",
                                   ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    "--cluster-port", str(ports[2 * i + 1]), "--cluster-node-timeout", "1000"],
                                   port=ports[2 * i])
                      for i in range(masters)]

    def url(self, db: int = 0) -> str:
        _database_0(db)
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def client(self, db: int = 0):
        """A redis-py RedisCluster (flushdb and scan_iter reach every master; dbsize and info do not)."""
        from redis.cluster import ClusterNode, RedisCluster

        _database_0(db)
        return RedisCluster(startup_nodes=[ClusterNode(n.host, n.port) for n in self.nodes])

    def __enter__(self) -> Self:
        try:
            for node in self.nodes:
                node.__enter__()
            subprocess.run(["redis-cli", "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            deadline = time.monotonic() + 20
            while not all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for node in self.nodes:
            node.__exit__()

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes)

    def used_memory_mb(self) -> float:
        return sum(n.used_memory_mb() for n in self.nodes)

    def dbsize(self) -> int:
        return sum(n.client().dbsize() for n in self.nodes)


def _database_0(db: int) -> None:
    if db:
        raise ValueError(f"database {db}: a Redis Cluster has database 0 only")


class ExistingRedis(PrivateRedis):
    """A redis-server already running at `url` (its host and port; benchmarks pick their own
    databases and flush them): the PrivateRedis interface, nothing started or stopped."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.host, self.port, self.proc = parsed.hostname or "127.0.0.1", parsed.port or 6379, None

    def __enter__(self) -> Self:
        self.client().ping()
        return self

    def __exit__(self, *_: object) -> None:
        pass


def redis_server(url: str | None, workdir: Path) -> PrivateRedis:
    """The server a run uses: the one at --redis URL if given, else a private one under `workdir`."""
    return ExistingRedis(url) if url else PrivateRedis(workdir)


def parse_or_run_child(ap: argparse.ArgumentParser, child: Callable[..., dict], nargs: int | str = "+",
                       metavar: tuple[str, ...] | None = None) -> argparse.Namespace | None:
    """A run's parsed arguments, or None once this process served as run_child's child: called as
    `script --child ARGS`, it prints `child(*ARGS)` as JSON, the line run_child reads."""
    ap.add_argument("--child", nargs=nargs, metavar=metavar, help="internal: what run_child runs")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return None
    return a


def run_child(script: Path, args: Sequence[str], timeout: float = 1800, max_rss_mb: float | None = None) -> dict:
    """Run `script --child ARGS` in a fresh interpreter; its last stdout line (JSON) plus its own
    peak RSS. Reaped with wait4 only (Popen.wait would reap first and lose the rusage).

    A child that exits non-zero or prints no JSON gives {"error": "<why>: <last line of its stderr>",
    "stderr_tail": [its last STDERR_LINES lines], "peak_rss_mb"} instead; so does one stopped for
    taking over `timeout` seconds or, given `max_rss_mb`, for holding more than that resident
    together with the processes it started (Ray's, say: checked every half second; shared pages
    count once per process, so this errs early), with the reason alone as its error. A stopped
    child is killed with every process it started, before the machine has to."""
    # files, not pipes: a chatty child never blocks
    out_sink, err_sink = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115
    peak_file = Path(tempfile.mkdtemp(prefix="bench_child_")) / "peak_kib"
    proc = subprocess.Popen([sys.executable, str(script), "--child", *args], stdout=out_sink, stderr=err_sink,
                            env={**os.environ, "PYTHONPATH": str(ROOT), PEAK_FILE_ENV: str(peak_file)})
    started = checked = time.monotonic()
    why = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > started + timeout:
            why = f"timed out after {timeout:.0f}s"
        elif max_rss_mb and time.monotonic() - checked > 0.5:
            checked = time.monotonic()
            if (held := _tree_rss_mb(proc.pid)) > max_rss_mb:
                why = (f"stopped after {checked - started:.0f}s at {held:,.0f} MB resident with its child "
                       f"processes (limit {max_rss_mb:,.0f} MB)")
        if why:
            _kill_tree(proc.pid)
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            break
        time.sleep(0.05)
    out, err = (_read(sink) for sink in (out_sink, err_sink))
    peak = round((int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss) / 1024, 1)  # KiB
    shutil.rmtree(peak_file.parent, ignore_errors=True)
    stopped = why is not None  # its stderr's last line says what it was doing, not why it ended
    if why is None and proc.returncode != 0:
        why = f"exit {proc.returncode}"
    if why is None:
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            why, err = "no JSON on stdout", err + out
    if why is not None:
        reason = None if stopped else error_line(err)
        return {"error": f"{why}: {reason}" if reason else why, "peak_rss_mb": peak,
                "stderr_tail": [line for line in err.splitlines() if line.strip()][-STDERR_LINES:]}
    result["peak_rss_mb"] = peak
    return result


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tree_rss_mb(pid: int) -> float:
    """Resident MB of process `pid` and its descendants (each process's RSS, summed)."""
    import psutil

    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def _kill_tree(pid: int) -> None:
    """SIGKILL process `pid` and every process it started (descendants first, listed before any dies)."""
    import psutil

    for p in reversed(_tree(pid)):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def run_path(script: Path, args: Sequence[str], child: Callable[..., dict] | None = None,
             timeout: float = 1800, max_rss_mb: float | None = None) -> dict:
    """One measured path: `script --child ARGS` in a fresh interpreter (run_child), or, given
    `child` (--quick), child(*ARGS) in this process, which measures no peak RSS of its own
    (peak_rss_mb None) and has neither limit. A failure is a row with "error" and "stderr_tail" either way."""
    if child is None:
        return run_child(script, args, timeout, max_rss_mb)
    try:
        return {**child(*map(str, args)), "peak_rss_mb": None}
    except Exception:  # noqa: BLE001 - a failed path is a row of the report, as a child's exit is
        trace = traceback.format_exc()
        return {"error": f"raised: {error_line(trace)}", "peak_rss_mb": None,
                "stderr_tail": [line for line in trace.splitlines() if line.strip()][-STDERR_LINES:]}


def error_line(stderr: str) -> str:
    """The exception line of the last traceback in `stderr` (the first unindented line after its
    frames, so a message that runs over several lines still gives its first), else the last line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    after = lines[starts[-1] + 1:] if starts else []
    found = next((line for line in after if not line[0].isspace()), None) or (lines[-1] if lines else "")
    return found.strip()[:300]


def _read(sink) -> str:
    sink.seek(0)
    text = sink.read().decode(errors="replace")
    sink.close()
    return text


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


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), where the figures come from."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)


def machine() -> dict:
    """Where the figures come from; load average matters on a shared 2-core box: the 1/5/15-minute
    load when the script started and at its end, and a note (`shared`) when the machine was not idle
    at the start."""
    import feast
    import redis

    server = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                            capture_output=True, text=True, check=False).stdout.strip()
    shared = {"shared": shared_note(LOAD_AT_START[0], os.cpu_count())} if LOAD_AT_START[0] >= 0.5 else {}
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "load_avg_at_start": [round(x, 2) for x in LOAD_AT_START],
            "load_avg": [round(x, 2) for x in os.getloadavg()], **shared,
            "python": platform.python_version(), "feast": feast.__version__,
            "redis_py": redis.__version__, "redis_server": server, "platform": platform.platform()}


def shared_note(load: float, cpus: int | None) -> str:
    return (f"load {load:.2f} on {cpus} CPUs when the run started (other work, or what an earlier run left in the "
            "1-minute average): times are slower and noisier than on an idle machine")


def add_run_args(ap: argparse.ArgumentParser, name: str, quick: str, redis: bool = True) -> None:
    """The options every benchmark has: --quick (`quick` says what it shrinks to), --out, and --redis
    for those that use Redis."""
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run on tiny data, every path ({quick}); JSON to {QUICK_DIR}/ unless --out")
    ap.add_argument("--out", help=f"JSON path, or a bare name for benchmarks/results/NAME.json [{name}; "
                                  f"with --quick: {QUICK_DIR}/NAME.json]")
    if redis:
        ap.add_argument("--redis", metavar="URL", help="use the redis-server at URL (host and port; the "
                                                       "databases used are flushed) instead of a private one")


def output_path(out: str | None, name: str, quick: bool) -> Path:
    """Where a run writes its JSON: --out (a bare name means benchmarks/results/<out>.json), else
    benchmarks/results/<name>.json; a --quick run defaults to QUICK_DIR/<name>.json and may not write under
    benchmarks/results/, whose files are the committed figures."""
    if out is None:
        out = str(QUICK_DIR / f"{name}.json") if quick else name
    path = Path(out) if "/" in out or out.endswith(".json") else RESULTS_DIR / f"{out}.json"
    if quick and path.resolve().is_relative_to(RESULTS_DIR):
        raise SystemExit(f"--quick does not write under {RESULTS_DIR} (the committed figures): "
                         "give --out a path elsewhere")
    return path


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def failures(rows: Iterable[dict], label: str = "label") -> list[str]:
    """'<label>: <error>' for each row that failed, in order."""
    return [f"{r[label]}: {r['error']}" for r in rows if r.get("error")]


def finish(path: Path, failed: Sequence[str], rows: Iterable[dict] = ()) -> None:
    """Print where the JSON went; if anything failed, each failed child's stderr tail and the
    failures, then exit 1."""
    print(f"wrote {path}")
    if not failed:
        return
    for r in rows:
        if r.get("stderr_tail"):
            print(f"--- stderr of {r.get('label') or r.get('engine') or r.get('path')} (last lines):",
                  *r["stderr_tail"], sep="\n    ", file=sys.stderr)
    print("FAILED:", *failed, sep="\n  ", file=sys.stderr)
    raise SystemExit(1)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:,.1f}" if isinstance(v, float) else "-" if v is None else str(v) for v in row))
    Console(width=max(Console().width, 140)).print(table)


class ProcessTree:
    """Memory and CPU of this process's descendants, sampled from /proc every `every` seconds on a
    thread while in the `with` block (and on each `cpu_seconds` call). With a local Ray those are
    Ray's processes: gcs_server, the raylet (which holds the object store) and its workers and actors
    ("ray::..." process titles). Ray's own memory reporting needs its dashboard, which ray_session
    leaves off, hence /proc.

    Per worker the kernel's high-water mark VmHWM (a process that exits keeps the last one read; it
    counts the object-store pages the worker mapped); over all processes, the largest sum of RssAnon
    at one sample (private memory, each page once: shared object-store pages are not in it)."""

    def __init__(self, every: float = 0.2, worker_title: bytes = b"ray::"):
        import threading

        self.every, self.stop, self.lock = every, threading.Event(), threading.Lock()
        self.worker_title = worker_title  # the process titles counted as workers (ray::MapWorker: actors)
        self.worker_hwm: dict[int, int] = {}  # pid -> VmHWM, KiB
        self.cpu: dict[int, float] = {}  # pid -> user + sys seconds, last read
        self.anon_sum = 0  # KiB
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTree:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        import psutil

        tick, anon = os.sysconf("SC_CLK_TCK"), 0
        for proc in psutil.Process().children(recursive=True):
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:  # exited since listed
                continue
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines())
                   if k in ("VmHWM", "RssAnon")}
            with self.lock:
                self.cpu[proc.pid] = (int(stat[11]) + int(stat[12])) / tick  # utime, stime
                if title.startswith(self.worker_title):
                    self.worker_hwm[proc.pid] = max(self.worker_hwm.get(proc.pid, 0), kib.get("VmHWM", 0))
            anon += kib.get("RssAnon", 0)
        with self.lock:
            self.anon_sum = max(self.anon_sum, anon)

    def cpu_seconds(self) -> float:
        """CPU the descendants have used so far (an exited one's up to its last sample)."""
        self.sample()
        with self.lock:
            return sum(self.cpu.values())

    def summary(self) -> dict:
        with self.lock:
            return {"ray_workers_seen": len(self.worker_hwm),
                    "ray_worker_peak_rss_mb": round(max(self.worker_hwm.values(), default=0) / 1024, 1),
                    "ray_private_sum_peak_mb": round(self.anon_sum / 1024, 1)}
