"""Micro-batching: each caller gets its own row's answer, load is shed at a full queue, close drains."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlplat.errors import Overloaded
from mlplat.serving.batching import MicroBatcher


class SlowSum:
    """A model whose score is the row's sum; the first call waits for `release` so others queue up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.batches: list[int] = []

    async def __call__(self, matrix: np.ndarray) -> np.ndarray:
        self.batches.append(len(matrix))
        if len(self.batches) == 1:
            await self.release.wait()
        return np.asarray(matrix.sum(axis=1))


async def test_a_lone_caller_never_waits_for_the_window() -> None:
    model = SlowSum()
    model.release.set()
    batcher = MicroBatcher(model, window_ms=60_000, max_batch=8, max_queue=8)
    batcher.start()
    async with asyncio.timeout(5):  # a window wait would take a minute
        assert await batcher.predict(np.array([1.0, 2.0])) == 3.0
        assert await batcher.predict(np.array([4.0, 5.0])) == 9.0
    assert model.batches == [1, 1]
    await batcher.close()


async def test_callers_waiting_together_share_one_batch_and_get_their_own_rows() -> None:
    model = SlowSum()
    batcher = MicroBatcher(model, window_ms=5, max_batch=64, max_queue=64)
    batcher.start()
    first = asyncio.create_task(batcher.predict(np.array([0.0, 0.0])))
    await asyncio.sleep(0.01)  # the first batch is running and blocked
    rest = [asyncio.create_task(batcher.predict(np.array([float(i), 1.0]))) for i in range(1, 10)]
    await asyncio.sleep(0.01)
    model.release.set()
    assert await first == 0.0
    assert await asyncio.gather(*rest) == [float(i) + 1.0 for i in range(1, 10)]
    assert model.batches == [1, 9]
    await batcher.close()


async def test_a_full_queue_refuses_at_once_and_close_answers_what_was_queued() -> None:
    model = SlowSum()
    batcher = MicroBatcher(model, window_ms=0, max_batch=1, max_queue=2)
    batcher.start()
    running = asyncio.create_task(batcher.predict(np.array([1.0])))
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(batcher.predict(np.array([2.0]))) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.predict(np.array([3.0]))
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded, match="not serving"):
        await batcher.predict(np.array([4.0]))
    model.release.set()
    await closing
    assert [await running, *(await asyncio.gather(*queued))] == [1.0, 2.0, 2.0]


async def test_a_model_error_reaches_every_caller_of_its_batch() -> None:
    async def broken(matrix: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, window_ms=5, max_batch=8, max_queue=8)
    batcher.start()
    results = await asyncio.gather(*(batcher.predict(np.array([1.0])) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)
    await batcher.close()


async def test_requests_on_their_way_are_waited_for_but_never_past_the_window() -> None:
    """With two more requests being handled (reading features, say), the first waits and all three share
    one call; when a request announced never comes, the batch still runs when the window ends."""
    model = SlowSum()
    model.release.set()
    on_the_way = 2
    batcher = MicroBatcher(model, window_ms=2_000, max_batch=8, max_queue=8, coming=lambda: on_the_way)
    batcher.start()
    first = asyncio.create_task(batcher.predict(np.array([1.0])))
    await asyncio.sleep(0.01)
    assert not first.done()  # waiting for the two on their way
    on_the_way = 0
    rest = [asyncio.create_task(batcher.predict(np.array([float(i)]))) for i in (2, 3)]
    assert [await first, *(await asyncio.gather(*rest))] == [1.0, 2.0, 3.0]
    assert model.batches == [3]

    on_the_way = 1  # announced, never arrives
    lonely = MicroBatcher(model, window_ms=50, max_batch=8, max_queue=8, coming=lambda: on_the_way)
    lonely.start()
    async with asyncio.timeout(5):
        assert await lonely.predict(np.array([4.0])) == 4.0
    await batcher.close()
    await lonely.close()
