"""The in-Ingress encoder's batches (serve_app/routing/thread_batches.py), with a plain function for the encoder."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve_app.routing.thread_batches import ThreadBatcher


class Gate:
    """``run`` for a batcher: records each batch, and holds the first ones until released."""

    def __init__(self, held: int = 1) -> None:
        self.batches: list[list[str]] = []
        self.held = held
        self.entered = threading.Semaphore(0)  # one release per batch that started
        self.release = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.entered.release()
        if len(self.batches) <= self.held:
            assert self.release.wait(5)
        return [item.upper() for item in items]

    async def started(self) -> None:
        """Once a batch has entered ``run`` (within 5 s)."""
        assert await asyncio.to_thread(self.entered.acquire, True, 5)


def test_a_lone_call_runs_at_once_as_a_batch_of_one():
    gate = Gate(held=0)
    batcher = ThreadBatcher(gate, parallel=1, max_batch=8)
    assert asyncio.run(batcher("a")) == "A"
    assert gate.batches == [["a"]]


def test_calls_that_arrive_while_a_batch_runs_share_the_next_one_up_to_max_batch():
    gate = Gate(held=1)
    batcher = ThreadBatcher(gate, parallel=1, max_batch=4)

    async def run() -> list[str]:
        first = asyncio.ensure_future(batcher("a"))
        await gate.started()  # "a" is in the encoder alone; the rest wait for it
        rest = [asyncio.ensure_future(batcher(x)) for x in "bcdefg"]
        await asyncio.sleep(0.05)
        gate.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(run()) == list("ABCDEFG")
    assert gate.batches == [["a"], ["b", "c", "d", "e"], ["f", "g"]]


def test_parallel_batches_run_side_by_side():
    both = threading.Barrier(2, timeout=5)  # each batch waits for the other: one worker alone would time out

    def run(items: list[str]) -> list[str]:
        both.wait()
        return items

    batcher = ThreadBatcher(run, parallel=2, max_batch=1)

    async def go() -> list[str]:
        return await asyncio.gather(batcher("a"), batcher("b"))

    assert asyncio.run(go()) == ["a", "b"]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs():
    def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("bad text")
        return items

    batcher = ThreadBatcher(run, parallel=1, max_batch=8)

    async def go() -> None:
        with pytest.raises(ValueError, match="bad text"):
            await batcher("bad")
        assert await batcher("good") == "good"

    asyncio.run(go())


def test_a_batch_with_the_wrong_number_of_results_fails_its_callers():
    gate = Gate(held=1)

    def run(items: list[str]) -> list[str]:
        return gate(items)[:1]  # one result, whatever the batch

    batcher = ThreadBatcher(run, parallel=1, max_batch=8)

    async def go() -> list[object]:
        first = asyncio.ensure_future(batcher("a"))
        await gate.started()
        pair = [asyncio.ensure_future(batcher(x)) for x in "bc"]  # the next batch: two items, one result
        await asyncio.sleep(0.05)
        gate.release.set()
        return await asyncio.gather(first, *pair, return_exceptions=True)

    first, *pair = asyncio.run(go())
    assert first == "A" and gate.batches == [["a"], ["b", "c"]]
    assert all(isinstance(r, RuntimeError) and "1 results for a batch of 2" in str(r) for r in pair)


def test_a_call_cancelled_while_it_waits_is_left_out_of_the_batch():
    gate = Gate(held=1)
    batcher = ThreadBatcher(gate, parallel=1, max_batch=8)

    async def run() -> None:
        first = asyncio.ensure_future(batcher("a"))
        await gate.started()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher("gone"), 0.01)  # a request's classifier timeout
        kept = asyncio.ensure_future(batcher("kept"))
        await asyncio.sleep(0.01)
        gate.release.set()
        assert await first == "A" and await kept == "KEPT"

    asyncio.run(run())
    assert gate.batches == [["a"], ["kept"]]


def test_nonsense_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        ThreadBatcher(lambda items: items, parallel=0)
