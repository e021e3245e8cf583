"""Batch inference on Ray Data: a model's batches run by a fixed pool of actors, with the outputs the
in-process code gives, bit for bit.

When the engine is Ray (the offline setting names Ray, or `signals build --engine ray`), the
producers' model passes run here: the teacher's cross-encoder over the escalated pairs, catalog and
query encoding (pipelines.teacher.cross_encoder, pipelines.modeling.ray_encoder). The rows go to Ray
Data as blocks, `map_batches` hands each block to one actor of an ActorPoolStrategy pool, the actor holds
the model (deserialized once, from one object put in Ray's store, so a cluster needs no shared disk)
and runs it, and the driver puts the outputs back in input order.

Why the caller plans the batches: a transformer's output for a row moves with its batch-mates, since
the batch is padded to its longest row (~1e-3 in bfloat16, ~1e-7 in float32). So the caller gives the
model batches its in-process code would run (index arrays, in order: texts sorted by length, then cut),
a block holds whole planned batches only, and an actor runs each as one forward. The thread count does
not move the outputs (MiniLM, 1 vs 2 threads, bfloat16 and float32: equal), so an actor runs on its
CPU share. Ray Data does not keep block order (preserve_order is off, for throughput), so each row
carries its index and the driver scatters the outputs back by it.

Starting the pool costs 5-10 s on 2 cores (Ray Data's executor, a process per actor importing torch
and transformers, the model deserialized), so a pass shorter than `min_rows` stays in-process; the
outputs are the same either way. Each actor holds ~0.8-1 GB (measured: benchmarks/bench_ray_data.py).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROW, BATCH, SIZE = "__row", "__batch", "__size"  # per row: input index, planned batch, that batch's rows
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class RayDataConfig:
    """The actor pool of a Ray Data pass; the defaults fit the local Ray of a 2-core machine
    (pipelines.features.ray_store.LOCAL_CPUS): two single-CPU actors."""

    actors: int = field(default=2, metadata={"help": "actors in the pool, each holding one copy of the model"})
    cpus_per_actor: float = field(default=1.0, metadata={
        "help": "CPUs Ray reserves per actor; its torch threads are the whole part (at least 1)"})
    batch_size: int = field(default=4096, metadata={
        "help": "rows per block, the unit of work an actor takes (whole model batches; a small pass is "
                "cut so that every actor gets a block)"})
    min_rows: int = field(default=5000, metadata={
        "help": "passes of fewer rows stay in-process (same outputs): starting the pool costs 5-10 s on 2 cores"})

    def __post_init__(self) -> None:
        if self.actors < 1 or self.cpus_per_actor <= 0 or self.batch_size < 1 or self.min_rows < 0:
            raise ValueError(f"{self}: actors, cpus_per_actor and batch_size must be positive, min_rows >= 0")

    @property
    def threads(self) -> int:
        """torch threads of one actor: its CPU share."""
        return max(1, int(self.cpus_per_actor))

    def runs(self, rows: int) -> bool:
        """Whether a pass of `rows` rows goes to the pool."""
        return rows > 0 and rows >= self.min_rows


class Worker(Protocol):
    """What an actor holds: built once from the payload (torch's threads already set to the actor's
    share), then called on one planned batch at a time (its input columns, in plan order), returning
    output columns of as many rows."""

    def __init__(self, payload: Any) -> None: ...

    def __call__(self, batch: Columns) -> Columns: ...


def quiet_ray() -> None:
    """Silence what Ray Data says on every pass and a user cannot act on: its progress bars (the
    pass shows its own), the dataset logger, deprecation warnings."""
    warnings.filterwarnings("ignore", module="ray")  # first: DataContext warns when it is made
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Actor:
    """One actor of the pool: the worker, built once; per block, each planned batch as one call."""

    def __init__(self, worker: type[Worker], payload: Any, threads: int):
        import ray
        import torch

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the actor's CPUs; torch's pool is ours
        self.worker = worker(ray.get(payload))  # constructor arguments reach the actor unresolved

    def __call__(self, block: Columns) -> Columns:
        starts = np.flatnonzero(np.r_[True, np.diff(block[BATCH]) != 0])
        ends = np.r_[starts[1:], len(block[ROW])]
        inputs = {k: v for k, v in block.items() if k not in (ROW, BATCH, SIZE)}
        parts = []
        for start, end in zip(starts, ends):
            if end - start != block[SIZE][start]:  # Ray Data cut a block: padding, hence outputs, would differ
                raise RuntimeError(f"planned batch {block[BATCH][start]} arrived with {end - start} of its "
                                   f"{block[SIZE][start]} rows")
            parts.append(self.worker({k: v[start:end] for k, v in inputs.items()}))
        return {**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, ROW: block[ROW]}


def _blocks(batches: Sequence[np.ndarray], rows: int, config: RayDataConfig) -> list[slice]:
    """Consecutive runs of planned batches as blocks (slices of the plan's row order): up to
    config.batch_size rows each, fewer when that leaves an actor idle, never a batch cut."""
    target = max(1, min(config.batch_size, math.ceil(rows / config.actors)))
    out, start, size = [], 0, 0
    for batch in batches:
        size += len(batch)
        if size >= target:
            out.append(slice(start, start + size))
            start, size = start + size, 0
    if size:
        out.append(slice(start, start + size))
    return out


def run_batches(inputs: dict[str, Sequence], batches: Sequence[np.ndarray], worker: type[Worker], payload: Any,
                config: RayDataConfig, description: str, progress: bool = True) -> Columns:
    """worker's output columns for every input row, in input order, computed on a Ray Data actor pool.

    inputs: equal-length columns (texts, numbers); batches: the model batches, as index arrays into the
    rows, that the in-process code runs, in its order, each row in exactly one; payload: what the worker
    is built from (the model), put in Ray's object store once. Needs a running Ray (ray_session)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray Data pass without a Ray: run it inside pipelines.features.repo.ray_session "
                           "(or after ray.init)")
    quiet_ray()
    n = len(next(iter(inputs.values())))
    order = np.concatenate(batches).astype(np.int64) if len(batches) else np.zeros(0, np.int64)
    if len(order) != n or np.bincount(order, minlength=n).max(initial=1) != 1:
        raise ValueError("the planned batches must hold every row exactly once")
    sizes = np.array([len(b) for b in batches], dtype=np.int64)
    plan = {ROW: order, BATCH: np.repeat(np.arange(len(batches)), sizes), SIZE: np.repeat(sizes, sizes),
            # texts as objects: a numpy string array is as wide as the longest text, in every row
            **{k: np.asarray(v, dtype=object if isinstance(v, list) else None)[order] for k, v in inputs.items()}}
    frames = [pd.DataFrame({k: v[s] for k, v in plan.items()}) for s in _blocks(batches, n, config)]
    ref = ray.put(payload)
    # max_restarts=0: an actor that dies fails the pass (and the command) instead of being restarted.
    # A restartable Ray Data actor makes Ray 2.60's core worker log an error line per pass, which no
    # Python setting silences (its constructor arguments live in the object store, ray-project/ray#53727);
    # on a 2-CPU local Ray an actor dies of memory or a bug, which a restart repeats. Ray 2.60 deprecates
    # passing it as a remote argument but has no named parameter for it yet: that warning is muted here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = ray.data.from_pandas(frames).map_batches(
            _Actor, fn_constructor_args=(worker, ref, config.threads), batch_size=None, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=config.actors), num_cpus=config.cpus_per_actor,
            max_restarts=0)
    out: Columns = {}
    columns = (TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=n)
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = block.pop(ROW)
            for name, values in block.items():
                if name not in out:
                    out[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
                out[name][rows] = values
            bar.advance(task, len(rows))
    return out
