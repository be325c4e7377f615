"""The contract between the ingress and the LLMs that answer it: in-cluster deployments and external endpoints.

The ingress sends an ``LLMRequest`` to one method, ``generate``, and always gets a stream back: a whole answer
(the request did not ask to stream) is its stream's first and only item, the JSON body as a dict; a streamed
answer is strings of one or more whole server-sent events, ending with ``data: [DONE]``. The ingress awaits the
first item, within ``request_timeout_s``, before it commits to a status: an error the client should see (a bad
parameter, a context overflow) travels as an ``OpenAIError`` carrying its status, raised before the first
item (a deployment sends it as an item, which ``DeploymentReply`` raises). ``LLMUnavailable`` and
``LLMOverloaded`` say an LLM could not take the request at all; any other exception is the LLM failing.

Two clients speak it: ``DeploymentLLM`` (a vLLM deployment, through one Serve handle) and ``ExternalLLM``
(an OpenAI-compatible endpoint over HTTP, serve_app/llm/external.py). What ``generate`` returns also has
``cancel()``, which stops the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import Endpoint


@dataclass(frozen=True)
class LLMRequest:
    endpoint: Endpoint
    body: dict[str, Any]  # the client's OpenAI body, its model set to the name the LLM serves
    stream: bool


class LLMUnavailable(Exception):
    """The LLM cannot be reached: its replica died, or its endpoint refuses connections."""


class LLMOverloaded(Exception):
    """The LLM turned the request away for capacity: its deployment's queue is full, or an endpoint's 429."""


class ReplyStream(Protocol):
    """A whole answer's JSON body, or server-sent-event strings, to iterate; ``cancel()`` stops the generation."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def __anext__(self) -> Awaitable[Any]: ...

    def cancel(self) -> Any: ...


class LLMClient(Protocol):
    def generate(self, request: LLMRequest) -> ReplyStream: ...


class DeploymentLLM:
    """The ingress's side of one LLM deployment: one handle, so one queue (``max_queued_requests``) per LLM.

    The handle is configured once: every ``.options()`` call makes a new handle, with its own metrics pusher,
    long-poll client and queue, so re-optioning per request costs more than the call itself.
    """

    def __init__(self, handle: Any) -> None:
        self._generate = handle.options(stream=True).generate

    def generate(self, request: LLMRequest) -> ReplyStream:
        return DeploymentReply(self._generate.remote(request))


class DeploymentReply:
    """A Serve response generator that speaks the protocol's exceptions instead of Ray's."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __aiter__(self) -> DeploymentReply:
        return self

    async def __anext__(self) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import BackPressureError

        try:
            item = await self._response.__anext__()
        except BackPressureError as exc:  # the deployment's queue (max_queued_requests) is full
            raise LLMOverloaded(str(exc)) from None
        except (ActorDiedError, ActorUnavailableError) as exc:
            raise LLMUnavailable(type(exc).__name__) from None
        if isinstance(item, OpenAIError):  # a client error, sent as a value so Serve does not log it as a failure
            raise item
        return item

    def cancel(self) -> None:
        self._response.cancel()


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
