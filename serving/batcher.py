"""Adaptive batching inside the worker process: concurrent requests share one encoder forward pass
and one scan of the index.

Why not BentoML's batchable API: reaching it from /retrieve goes through BentoML's in-process HTTP
client, a second trip through the HTTP stack that cost about as much as the forward pass itself.
This batcher has no timer to tune: a request that finds the encoder idle is encoded at once (no
added latency at low load); requests that arrive while a pass runs wait for it and go together in
the next one (up to `max_batch`), so the batch grows with the load by itself.

One batcher per event loop (one per BentoML worker process); the batch function runs in a worker
thread so the loop keeps accepting and parsing requests meanwhile. It maps a list of payloads to a
list of results, one per payload, in order.
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

    def __init__(self, run: Callable[[list[P]], Sequence[R]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._pending: list[tuple[P, asyncio.Future]] = []
        self._draining = False

    async def __call__(self, payload: P) -> R:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run what is pending, batch after batch, until nothing is left."""
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
            self._draining = False
