"""Dynamic micro-batching: concurrent single-row requests for one model version become one model call.

The caller says how many more requests for the model are on their way (being handled, not yet queued);
the batcher takes what is queued and waits for those, never longer than `window_ms` after the first and
never beyond `max_batch` rows, runs them as one matrix and answers each caller with its own row. A lone
request (nothing on the way) runs at once: it pays no window. The queue is bounded: a full queue refuses
at once (Overloaded → RESOURCE_EXHAUSTED) instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import numpy as np

from mlplat.errors import Overloaded

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, *, window_ms: float, max_batch: int, max_queue: int,
                 on_batch: Callable[[int], None] = lambda _: None, coming: Callable[[], int] = lambda: 0) -> None:
        """coming: how many requests for this model are being handled right now and may still join (their
        handlers are reading features, say); the batcher waits for them, never longer than the window."""
        self._run_batch = run_batch
        self._coming = coming
        self._window_s = window_ms / 1000
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[float]]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._taken: list[tuple[np.ndarray, asyncio.Future[float]]] = []  # out of the queue, not yet answered
        self._idle = asyncio.Event()  # nothing queued or taken
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="micro-batcher")

    async def predict(self, row: np.ndarray) -> float:
        """One row's score; raises Overloaded when the queue is full, or what the model raised."""
        if self._task is None or self._task.done():
            raise Overloaded("this model version is not serving (stopped or swapping)")
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((row, future))
            self._idle.clear()
        except asyncio.QueueFull:
            raise Overloaded(f"prediction queue is full ({self._queue.maxsize} waiting); retry shortly") from None
        return await future

    async def _drain(self) -> None:
        try:
            while True:
                self._taken = [await self._queue.get()]
                await self._collect_and_answer(self._taken)
                self._taken = []
                if self._queue.empty():
                    self._idle.set()
        finally:  # cancelled mid-batch (shutdown past its deadline): nobody is left waiting forever
            for _, future in self._taken:
                if not future.done():
                    future.set_exception(Overloaded("model version stopped before this request ran; retry"))

    async def _collect_and_answer(self, items: list[tuple[np.ndarray, asyncio.Future[float]]]) -> None:
        deadline = asyncio.get_running_loop().time() + self._window_s
        while len(items) < self._max_batch:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            if self._coming() <= 0:  # nobody else is on the way: a lone request runs at once
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    items.append(await self._queue.get())
            except TimeoutError:
                break
        await self._answer(items)

    async def _answer(self, items: list[tuple[np.ndarray, asyncio.Future[float]]]) -> None:
        live = [(row, f) for row, f in items if not f.done()]  # a caller that gave up is not computed for
        if not live:
            return
        self._on_batch(len(live))
        try:
            scores = await self._run_batch(np.stack([row for row, _ in live]))
        except Exception as e:  # every caller of this batch gets the model's error
            for _, future in live:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), score in zip(live, scores, strict=True):
            if not future.done():
                future.set_result(float(score))

    async def close(self, drain_s: float = 5.0) -> None:
        """Answer what is queued (up to drain_s), then stop; later calls are refused."""
        if self._task is None:
            return
        task, self._task = self._task, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await self._idle.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded("model version stopped before this request ran; retry"))
