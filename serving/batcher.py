"""Adaptive batching inside the worker process: concurrent requests share one encoder forward pass.

Why not BentoML's batchable API: reaching it from /retrieve goes through BentoML's in-process HTTP
client, a second trip through the HTTP stack that cost about as much as the forward pass itself.
This batcher has no timer to tune: a request that finds the encoder idle is encoded at once (no
added latency at low load); requests that arrive while a pass runs wait for it and go together in
the next one (up to `max_batch`), so the batch grows with the load by itself.

One batcher per event loop (one per BentoML worker process); the forward pass runs in a worker
thread so the loop keeps accepting and parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np


@dataclass
class Encoded:
    """One text's vector and the size of the forward pass it rode in (for the Server-Timing header)."""

    vector: np.ndarray
    batch: int


class MicroBatcher:
    """`await batcher(text)` -> Encoded, batching concurrent callers into one `encode(texts)` call."""

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._encode = encode
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._draining = False

    async def __call__(self, text: str) -> Encoded:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Encode what is pending, batch after batch, until nothing is left."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                batch = [(text, future) for text, future in batch if not future.cancelled()]
                if not batch:
                    continue
                try:
                    vectors = await anyio.to_thread.run_sync(self._encode, [text for text, _ in batch])
                except Exception as exc:  # noqa: BLE001 - every waiter of this batch gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():
                        future.set_result(Encoded(vector, len(batch)))
        finally:
            self._draining = False
