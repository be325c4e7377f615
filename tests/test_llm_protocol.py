"""Streams through the LLM handle: ready events coalesced, order kept, errors and cancellation carried."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.errors import OpenAIError
from serve_app.llm.protocol import coalesce_ready


async def _events(n: int, pause_s: float = 0.0, fail_after: int | None = None):
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise OpenAIError(400, "bad")
        yield f"data: {i}\n\n"
        await asyncio.sleep(pause_s)


def _collect(source, consumer_pause_s: float = 0.0):
    async def run():
        items = []
        async for item in coalesce_ready(source):
            items.append(item)
            await asyncio.sleep(consumer_pause_s)
        return items

    return asyncio.run(run())


def test_a_fast_reader_gets_every_event_on_its_own():
    items = _collect(_events(5, pause_s=0.01))
    assert items == [f"data: {i}\n\n" for i in range(5)]


def test_a_busy_reader_gets_what_piled_up_in_one_item_in_order():
    items = _collect(_events(50), consumer_pause_s=0.01)
    assert "".join(items) == "".join(f"data: {i}\n\n" for i in range(50))
    assert len(items) < 50  # fewer items than events: they crossed together


def test_an_error_reaches_the_reader_after_the_events_before_it():
    async def run():
        seen = []
        with pytest.raises(OpenAIError):
            async for item in coalesce_ready(_events(5, fail_after=3)):
                seen.append(item)
        return "".join(seen)

    assert asyncio.run(run()) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    with pytest.raises(OpenAIError):
        _collect(_events(5, fail_after=0))


def test_closing_the_stream_cancels_its_source():
    cancelled = asyncio.Event()

    async def endless():
        try:
            while True:
                yield "data: x\n\n"
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run():
        stream = coalesce_ready(endless())
        await stream.__anext__()
        await stream.aclose()
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(run())
