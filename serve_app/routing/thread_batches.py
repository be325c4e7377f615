"""Batches of concurrent calls, formed on the worker threads that run them.

The encoder runs on worker threads so the event loop stays free for HTTP. Under load a busy event loop takes
milliseconds to come round to each ready task, and a batch queue run from the loop (Serve's ``@serve.batch``)
passes every call through it several times: queued, collected by the batching task, handed to a thread, the
result set, the caller resumed. In the Ingress at 8 clients that waiting cost about 25 ms of a 36 ms embed,
against about 10 ms of encoder (docs/benchmarks.md).

Here a call queues its item and, when fewer than ``parallel`` workers run, starts one. A worker takes every
item waiting (up to ``max_batch``) as one batch, runs it, hands each result to its caller's loop, and goes on to
the next batch itself: the loop is passed once per call, to resume the caller. A lone call never waits for
company; under load the calls that arrive while a batch runs share the next one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class ThreadBatcher(Generic[Item, Result]):
    """``await batcher(item)``: ``run`` called on a worker thread with a batch of items, one result per item."""

    def __init__(self, run: Callable[[list[Item]], Sequence[Result]], parallel: int = 1, max_batch: int = 8,
                 name: str = "batch") -> None:
        if parallel < 1 or max_batch < 1:
            raise ValueError(f"parallel and max_batch must be at least 1, not {parallel} and {max_batch}")
        self.run = run
        self.parallel = parallel
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Item, asyncio.Future[Result], asyncio.AbstractEventLoop]] = deque()
        self._workers = 0

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        with self._lock:
            self._waiting.append((item, future, loop))
            start = self._workers < self.parallel
            if start:
                self._workers += 1
        if start:
            self._executor.submit(self._work)
        return await future  # cancelled (a timeout): the item is left out of its batch if not started yet

    def _work(self) -> None:
        while batch := self._next_batch():
            try:
                results = self.run([item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
                outcomes = [(result, None) for result in results]
            except BaseException as exc:  # every caller of the batch gets the error
                outcomes = [(None, exc)] * len(batch)
            for (_, future, loop), (result, error) in zip(batch, outcomes, strict=True):
                try:
                    loop.call_soon_threadsafe(_settle, future, result, error)
                except RuntimeError:  # the caller's loop is closed: nobody waits for this result
                    pass

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result], asyncio.AbstractEventLoop]]:
        """The items waiting, up to ``max_batch``; none: this worker stops (under the lock, so no item is left)."""
        with self._lock:
            batch = []
            while self._waiting and len(batch) < self.max_batch:
                entry = self._waiting.popleft()
                if not entry[1].cancelled():
                    batch.append(entry)
            if not batch:
                self._workers -= 1
            return batch


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():  # cancelled while its batch ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
