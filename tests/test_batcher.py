"""The in-process adaptive batcher: batches form under load by themselves, answers never mix."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batcher import MicroBatcher


class SlowEncoder:
    """Result i = (len(text), size of its batch); each call takes `delay` seconds (a forward pass)."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay, self.calls = delay, []

    def __call__(self, texts):
        assert threading.current_thread() is not threading.main_thread()  # never blocks the event loop
        self.calls.append(list(texts))
        time.sleep(self.delay)
        return [(len(t), len(texts)) for t in texts]


def test_an_idle_batcher_encodes_at_once_alone():
    encoder = SlowEncoder()

    async def main():
        batcher = MicroBatcher(encoder, max_batch=8)
        return [await batcher("drill"), await batcher("ladder")]

    first, second = asyncio.run(main())
    assert encoder.calls == [["drill"], ["ladder"]] and (first, second) == ((5, 1), (6, 1))


def test_requests_arriving_during_a_pass_share_the_next_one_up_to_max_batch():
    encoder = SlowEncoder()
    texts = ["x" * n for n in range(1, 12)]

    async def main():
        batcher = MicroBatcher(encoder, max_batch=4)
        return await asyncio.gather(*(batcher(t) for t in texts))

    results = asyncio.run(main())
    assert [len(c) for c in encoder.calls] == [4, 4, 3]  # all arrive while the first pass runs
    assert results == [(len(t), 4) for t in texts[:8]] + [(len(t), 3) for t in texts[8:]]  # each its own


def test_a_failing_pass_fails_its_callers_only_and_the_batcher_recovers():
    def encode(texts):
        if "bad" in texts:
            raise RuntimeError("encoder broke")
        return [len(texts)] * len(texts)

    async def main():
        batcher = MicroBatcher(encode, max_batch=8)
        failed = await asyncio.gather(batcher("bad"), batcher("ok"), return_exceptions=True)
        return failed, await batcher("fine")

    failed, later = asyncio.run(main())
    assert all(isinstance(f, RuntimeError) for f in failed) and later == 1


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(SlowEncoder(), max_batch=0)
    with pytest.raises(ValueError, match="lanes"):
        MicroBatcher(SlowEncoder(), max_batch=8, lanes=0)


def test_lanes_run_batches_side_by_side_never_more_than_lanes():
    """With two lanes a request that arrives during a pass does not wait for it: passes overlap."""
    running, peak, lock = [0], [0], threading.Lock()

    def encode(texts):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return [len(texts)] * len(texts)

    async def main(lanes):
        batcher = MicroBatcher(encode, max_batch=2, lanes=lanes)
        return await asyncio.gather(*(batcher(str(i)) for i in range(8)))

    for lanes in (1, 2, 3):  # 8 requests in batches of 2: four passes
        peak[0] = 0
        assert asyncio.run(main(lanes)) == [2] * 8 and peak[0] == lanes
