"""Adaptive batching inside the worker process: concurrent requests share one encoder forward pass
and one scan of the index.

Why not BentoML's batchable API: reaching it from /retrieve goes through BentoML's in-process HTTP
client, a second trip through the HTTP stack that cost about as much as the forward pass itself.
This batcher has no timer to tune: a request that finds the encoder idle is encoded at once (no
added latency at low load); requests that arrive while a pass runs wait for it and go together in
the next one (up to `max_batch`), so the batch grows with the load by itself.

One batcher per event loop (one per BentoML worker process); the batch function runs in a worker
thread so the loop keeps accepting and parsing requests meanwhile. It maps a list of payloads to a
list of results, one per payload, in order, and must be safe to call from `lanes` threads at once.

`lanes` batches may run at the same time. Why more than one: a process that runs one pass at a time
uses one core however busy it is, and how the kernel spreads keep-alive connections over worker
processes is luck (measured: all 8 of a client's connections on one of two workers, one core idle,
76 req/s). With two lanes a process uses the second core whenever requests wait (98 req/s in that
case; what is left is the GIL, held by each request's HTTP, feature decoding and blend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import anyio

P = TypeVar("P")
R = TypeVar("R")


class MicroBatcher(Generic[P, R]):
    """`await batcher(payload)` -> result, batching concurrent callers into one `run(payloads)` call."""

    def __init__(self, run: Callable[[list[P]], Sequence[R]], max_batch: int, lanes: int = 1) -> None:
        if max_batch < 1 or lanes < 1:
            raise ValueError(f"max_batch and lanes must be at least 1, got {max_batch} and {lanes}")
        self._run = run
        self.max_batch, self.lanes = max_batch, lanes
        self._pending: list[tuple[P, asyncio.Future]] = []
        self._busy = 0  # lanes draining now
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    async def __call__(self, payload: P) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        if self._busy < self.lanes:
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        """One lane: run what is pending, batch after batch, until nothing is left."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                batch = [(payload, future) for payload, future in batch if not future.cancelled()]
                if not batch:
                    continue
                try:
                    results = await anyio.to_thread.run_sync(self._run, [payload for payload, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter of this batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy -= 1
