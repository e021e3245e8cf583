"""The service in a child process, for tests, benchmarks and notebooks: `unisup serve` started
with a workspace, waited on until /readyz answers, stopped by its id.

`unisup serve` execs `bentoml serve`, so the child's id is the server's and terminating it stops
BentoML's workers too.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
