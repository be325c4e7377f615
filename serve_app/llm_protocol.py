"""The contract between the ingress and the LLMs that answer it: in-cluster deployments and external endpoints.

The ingress sends an ``LLMRequest`` and decides, from the request, how the answer comes back: whole
(``complete``: one JSON body) or streamed (``stream``: strings of one or more whole server-sent events,
ending with ``data: [DONE]``). An error the client should see (a bad parameter, a context overflow) travels as an
``OpenAIError`` carrying its status, raised before the first chunk of a stream, so the ingress can set
the HTTP status before it commits to a stream. ``LLMUnavailable`` and ``LLMOverloaded`` say an LLM could
not take the request at all; any other exception is the LLM failing.

Two clients speak it: ``DeploymentLLM`` (a vLLM deployment, through Serve handles) and ``ExternalLLM``
(an OpenAI-compatible endpoint over HTTP, serve_app/external_llm.py). Each returns something to await or
iterate that also has ``cancel()``, which stops the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.requests import Endpoint


@dataclass(frozen=True)
class LLMRequest:
    endpoint: Endpoint
    body: dict[str, Any]  # the client's OpenAI body, its model set to the name the LLM serves
    stream: bool


class LLMUnavailable(Exception):
    """The LLM cannot be reached: its endpoint refuses connections."""


class LLMOverloaded(Exception):
    """The LLM turned the request away for capacity (an endpoint's 429)."""


class Reply(Protocol):
    """The whole answer's JSON body, to await."""

    def __await__(self) -> Generator[Any, None, dict[str, Any]]: ...

    def cancel(self) -> Any: ...


class ReplyStream(Protocol):
    """Server-sent-event strings, to iterate."""

    def __aiter__(self) -> AsyncIterator[str]: ...

    def __anext__(self) -> Awaitable[str]: ...

    def cancel(self) -> Any: ...


class LLMClient(Protocol):
    def complete(self, request: LLMRequest) -> Reply: ...

    def stream(self, request: LLMRequest) -> ReplyStream: ...


class DeploymentLLM:
    """The ingress's side of one LLM deployment.

    Its handles are configured once: every ``.options()`` call makes a new handle, with its own metrics
    pusher and long-poll client, so re-optioning per request costs more than the call itself.
    """

    def __init__(self, handle: Any) -> None:
        self._complete = handle.complete
        self._stream = handle.options(stream=True).stream

    def complete(self, request: LLMRequest) -> Reply:
        """A response to await for the whole answer's JSON body; ``.cancel()`` stops the generation."""
        assert not request.stream
        return self._complete.remote(request)

    def stream(self, request: LLMRequest) -> ReplyStream:
        """An async iterator of SSE strings; ``.cancel()`` stops the generation."""
        assert request.stream
        return self._stream.remote(request)


_END = object()


async def coalesce_ready(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The events of a stream, each item joining every event that is ready when it is sent.

    A lone stream gets one item per engine step, at once; when many streams keep a replica busy, the
    events that piled up meanwhile cross the handle as one item instead of one object each. Nothing
    ever waits for company. Closing this generator (the client left) cancels the source with it.
    """
    ready: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                ready.put_nowait(event)
        except Exception as exc:  # an error before or after the first event reaches the consumer as itself
            ready.put_nowait(exc)
        ready.put_nowait(_END)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            batch = [await ready.get()]
            while not ready.empty():
                batch.append(ready.get_nowait())
            texts = [item for item in batch if isinstance(item, str)]
            if texts:
                yield "".join(texts)
            errors = [item for item in batch if isinstance(item, Exception)]
            if errors:
                raise errors[0]
            if batch[-1] is _END:
                return
    finally:
        task.cancel()
