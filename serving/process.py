"""The service in a child process, for tests, benchmarks and notebooks: `unisup serve` started
with a workspace, waited on until /readyz answers, stopped by its id; and Load, concurrent
clients to keep it busy while a test changes something under it.

`unisup serve` execs `bentoml serve`, so the child's id is the server's and terminating it stops
BentoML's workers too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from pipelines.workspace import PROJECT_ROOT, Workspace


class ServiceProcess:
    """`unisup serve` on 127.0.0.1:`port`, output to `log`."""

    def __init__(self, ws: Workspace, port: int, log: Path, env: Mapping[str, str] | None = None):
        self.url, self.log = f"http://127.0.0.1:{port}", Path(log)
        args = ["--workspace", str(ws.root), "--online", ws.online, "--repo", str(ws.repo_dir)]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_HOME": str(self.log.parent / "bentoml"),
                    "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args, "serve", "--port", str(port)],
                                         stdout=out, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 300) -> None:
        """Block until GET /readyz is 200; raise with the log's tail if the child exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"service not ready after {timeout:.0f} s:\n{self.tail()}")

    def wait_for_log(self, done: Callable[[str], bool], timeout: float = 10) -> str:
        """The log once `done(log)` holds: worker output reaches the file through BentoML's supervisor,
        a moment after the response that caused it."""
        deadline = time.monotonic() + timeout
        while not done(log := self.log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise AssertionError(f"log condition not met after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)
        return log

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Load:
    """One thread per (endpoint, body) posting to a running service until `join`, each on its own
    keep-alive connection; keeps every answer as (monotonic time, endpoint, JSON) and every failure
    (anything but 200, or no answer) as (endpoint, status or error, text)."""

    def __init__(self, url: str, requests: list[tuple[str, dict]]):
        self.url, self.answers, self.failures = url, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=request, daemon=True) for request in requests]
        for thread in self._threads:
            thread.start()

    def _run(self, endpoint: str, body: dict) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/{endpoint}", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append((endpoint, type(exc).__name__, str(exc)))
                    continue
                if response.status_code == 200:
                    self.answers.append((time.monotonic(), endpoint, response.json()))
                else:
                    self.failures.append((endpoint, response.status_code, response.text[:500]))

    def since(self, t: float) -> list[tuple[str, dict]]:
        """(endpoint, answer) of the answers received after monotonic time t."""
        return [(endpoint, body) for at, endpoint, body in list(self.answers) if at > t]

    def join(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
