"""Crash-safety harness: every writing step of the pipeline, killed with SIGKILL at seeded random
moments and run again, must end in exactly the state an uninterrupted run leaves.

    python benchmarks/crash_harness.py [--kills 5] [--seed 0] [--out crash_harness]
    python benchmarks/crash_harness.py --quick   # one kill per step, JSON to $TMPDIR (tests/test_crash.py)

Steps, on a small synthetic lake, each as the `unisup` command a user runs: ingest, signals build
(--quick, the real teacher cascade), apply, materialize into SQLite and into a private redis-server,
dataset build, index build, train (--quick). For each step the workspace the previous step left is
copied; the step runs once uninterrupted (the reference: its wall time T and its end state); then, per
trial, a fresh copy, the step started, its process group killed at a moment drawn from the trial's
slice of [0, T] (stratified: k trials cover the run from import to the last write), the step run again
to completion, and the end state compared with the reference's:

* every parquet table by content (Arrow IPC bytes), every other file by bytes; JSON and YAML with
  the workspace path masked and wall-clock fields (created, seconds, stats) dropped; cache/ and
  registry.db left out as files (scratch; protobuf with a fresh uuid per write);
* the registry by its definitions (each entity, view and service spec, serialized);
* the online store by a full read of every materialized key (SQLite rows; Redis keys and hashes), the
  materialization watermark included but for its end (the run's clock);
* no temporary (`.NAME.tmp-PID-…`) left anywhere, and `unisup consistency` clean after materialize.

Exits 1 if any trial's rerun failed or ended different. Nothing here is a timing figure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, add_run_args, finish, machine, output_path, print_table, redis_server, write_json
from pipelines.atomic import TEMP_MARK
from pipelines.features.watermark import WATERMARK_KEY, WATERMARK_TABLE

AS_OF = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")  # recent: no view's TTL has run out
VOLATILE_KEYS = {"created", "created_at", "stats", "since"}  # and every key ending in "seconds"
SKIPPED = ("cache", "registry.db", "online.db", ".unisup.lock")


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    after: str | None  # the step whose end state this one starts from (None: an empty workspace)
    redis: bool = False  # online store: the private redis-server instead of SQLite
    check_consistency: bool = False


STEPS = (
    Step("ingest", ("ingest", "synthetic", "--items", "400", "--queries", "80", "--as-of", AS_OF), None),
    Step("signals build", ("signals", "build", "--quick", "--as-of", AS_OF), "ingest"),
    Step("apply", ("apply",), "signals build"),
    Step("materialize (SQLite)", ("materialize",), "apply", check_consistency=True),
    Step("materialize (Redis)", ("materialize",), "apply", redis=True, check_consistency=True),
    Step("dataset build", ("dataset", "build", "--entities", "entities.parquet", "--out", "datasets/crash"),
         "materialize (SQLite)"),
    Step("index build", ("index", "build"), "materialize (SQLite)"),
    Step("train", ("train", "--quick", "--as-of", AS_OF), "materialize (SQLite)"),
)


@dataclass
class Trial:
    kill_at: float  # seconds after start
    killed: bool = False  # False: the step had finished before the kill
    rerun_exit: int | None = None
    differs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rerun_exit == 0 and not self.differs


class Harness:
    def __init__(self, root: Path, redis, kills: int, seed: int):
        self.root, self.redis, self.kills = root, redis, kills
        self.rng = random.Random(seed)
        self.states: dict[str, Path] = {}
        self.next_db = 0

    def unisup(self, ws: Path, step: Step, db: int, args: tuple[str, ...] | None = None) -> subprocess.Popen:
        online = self.redis.url(db) if step.redis else "sqlite"
        cmd = [sys.executable, "-m", "pipelines.cli", "--workspace", str(ws), "--online", online,
               *(args or step.args)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "UNISUP_THREADS": "2"}
        with open(ws.parent / f"{ws.name}.log", "ab") as log:  # the child keeps its own copy of the handle
            return subprocess.Popen(cmd, cwd=ws, env=env, stdout=log, stderr=log, start_new_session=True)

    def copy_base(self, step: Step, name: str) -> Path:
        ws = self.root / name
        shutil.rmtree(ws, ignore_errors=True)
        if step.after is None:
            ws.mkdir(parents=True)
        else:
            shutil.copytree(self.states[step.after], ws, symlinks=True)
        return ws

    def fresh_db(self, step: Step) -> int:
        if not step.redis:
            return 0
        self.next_db = (self.next_db + 1) % 16
        self.redis.client(self.next_db).flushdb()
        return self.next_db

    def run(self, step: Step) -> dict:
        slug = step.name.replace(" ", "_").replace("(", "").replace(")", "")
        ref, db = self.copy_base(step, f"{slug}-ref"), self.fresh_db(step)
        t0 = time.perf_counter()
        code = self.unisup(ref, step, db).wait()
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"{step.name}: the uninterrupted run exited {code}; see {ref}.log")
        self.states[step.name] = ref
        reference = snapshot(ref, self.redis.client(db) if step.redis else None)
        trials = []
        for i in range(self.kills):
            trial = Trial(kill_at=round(self.rng.uniform(i / self.kills, (i + 1) / self.kills) * seconds, 2))
            ws, db = self.copy_base(step, f"{slug}-{i}"), self.fresh_db(step)
            proc = self.unisup(ws, step, db)
            try:
                proc.wait(timeout=trial.kill_at)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                trial.killed = True
            trial.rerun_exit = self.unisup(ws, step, db).wait()
            if trial.rerun_exit == 0:
                state = snapshot(ws, self.redis.client(db) if step.redis else None)
                trial.differs = sorted(k for k in reference.keys() | state.keys() if reference.get(k) != state.get(k))
                if step.check_consistency and self.unisup(ws, step, db, ("consistency", "--n", "200")).wait() != 0:
                    trial.differs.append("unisup consistency")
            trials.append(trial)
            if trial.ok:
                shutil.rmtree(ws, ignore_errors=True)
        return {"step": step.name, "command": "unisup " + " ".join(step.args), "reference_seconds": round(seconds, 1),
                "state_items": len(reference), "trials": [vars(t) | {"ok": t.ok} for t in trials]}


def snapshot(ws: Path, redis_client=None) -> dict[str, str]:
    """Digest of everything a reader of the workspace sees (see the module docstring)."""
    digests = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws).as_posix()
        if TEMP_MARK in path.name:
            digests[f"temporary {rel}"] = "left behind"
        elif path.is_file() and not rel.startswith(SKIPPED):
            digests[rel] = _digest(path, ws)
    if (ws / "registry.db").exists():
        digests["registry definitions"] = _registry_digest(ws)
    if (ws / "online.db").exists():
        digests["online store (SQLite)"] = _sqlite_digest(ws / "online.db")
    if redis_client is not None:
        digests["online store (Redis)"] = _redis_digest(redis_client)
    return digests


def _digest(path: Path, ws: Path) -> str:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        table = table.replace_schema_metadata(None).combine_chunks()
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
    elif path.suffix in (".json", ".yaml", ".yml"):
        text = path.read_text().replace(str(ws), "<ws>")
        data = (json.dumps(_stable(json.loads(text)), sort_keys=True) if path.suffix == ".json" else text).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _stable(obj):
    """JSON without wall-clock fields."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE_KEYS and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _registry_digest(ws: Path) -> str:
    """The specs of every entity, view and service, without their `meta` (apply times) and with the
    workspace path (Feast stores file sources' absolute paths) masked."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(ws))
    specs = sorted(str(_without_meta(o.to_proto().spec)).replace(str(ws), "<ws>")
                   for kind in (store.list_entities, store.list_feature_views, store.list_on_demand_feature_views,
                                store.list_feature_services) for o in kind())
    return hashlib.sha256("".join(specs).encode()).hexdigest()[:16]


def _without_meta(message):
    """`message` with every nested `meta` field cleared (in place)."""
    for fd, value in message.ListFields():
        if fd.name == "meta":
            message.ClearField("meta")
        elif fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                children = value.values() if fd.message_type.fields_by_name["value"].message_type else []
            else:
                children = [value] if hasattr(value, "ListFields") else value  # one message or a repeated field
            for child in children:
                _without_meta(child)
    return message


def _sqlite_digest(db: Path) -> str:
    digest = hashlib.sha256()
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            digest.update(table.encode())
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2'):
                digest.update(repr(row if table != WATERMARK_TABLE else (row[0], _without_end(row[1]))).encode())
    return digest.hexdigest()[:16]


def _redis_digest(client) -> str:
    digest = hashlib.sha256()
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        value = sorted(client.hgetall(key).items()) if kind == b"hash" else client.dump(key)
        if key == WATERMARK_KEY:
            value = [(view, _without_end(mark)) for view, mark in value]
        digest.update(repr((key, value)).encode())
    return digest.hexdigest()[:16]


def _without_end(mark: str | bytes) -> str:
    """A view's materialization watermark without its end (the run's clock: `unisup materialize` ends at now)."""
    return json.dumps({k: v for k, v in json.loads(mark).items() if k != "end"}, sort_keys=True)


def prepare_entities(harness: Harness) -> None:
    """The entity rows dataset build reads, written once into the base it copies (sampled event
    times depend on the clock, so they are drawn once, not per trial)."""
    base = harness.states["materialize (SQLite)"]
    step = Step("entities", (), None)
    code = harness.unisup(base, step, 0, ("dataset", "entities", "--out", "entities.parquet", "--n", "2000")).wait()
    if code != 0:
        raise RuntimeError(f"dataset entities exited {code}; see {base}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_args(ap, "crash_harness", "one kill per step")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per step (default 5; --quick: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the workspaces (default: only failed trials')")
    a = ap.parse_args()
    kills = 1 if a.quick else a.kills
    out = output_path(a.out, "crash_harness", a.quick)
    root = Path(tempfile.mkdtemp(prefix="unisup_crash_"))
    started = time.perf_counter()
    rows = []
    with redis_server(a.redis, root) as redis:
        harness = Harness(root, redis, kills, a.seed)
        for step in STEPS:
            rows.append(harness.run(step))
            if step.name == "materialize (SQLite)":
                prepare_entities(harness)
            done = rows[-1]["trials"]
            print(f"{step.name}: {sum(t['ok'] for t in done)}/{len(done)} trials equal to the uninterrupted run",
                  flush=True)
    failed = [f"{r['step']} (kill at {t['kill_at']} s): " + (f"rerun exited {t['rerun_exit']}" if t["rerun_exit"]
              else f"differs in {t['differs'][:5]}") for r in rows for t in r["trials"] if not t["ok"]]
    write_json(out, {"quick": a.quick, "kills_per_step": kills, "seed": a.seed, "as_of": AS_OF, "machine": machine(),
                     "seconds": round(time.perf_counter() - started, 1), "steps": rows, "failed": failed,
                     "workspaces": str(root)})
    print_table(f"crash harness: {kills} SIGKILL(s) per step, seed {a.seed}",
                ["step", "uninterrupted s", "kills", "killed mid-run", "finished first", "rerun equal"],
                [(r["step"], r["reference_seconds"], len(r["trials"]), sum(t["killed"] for t in r["trials"]),
                  sum(not t["killed"] for t in r["trials"]), sum(t["ok"] for t in r["trials"])) for r in rows])
    if not a.keep and not failed:
        shutil.rmtree(root, ignore_errors=True)
    finish(out, failed)


if __name__ == "__main__":
    main()
