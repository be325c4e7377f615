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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import Endpoint

WATCH_S = 0.5  # how often a reply waiting for its first item checks that its deployment still has a replica


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
    long-poll client and queue, so re-optioning per request costs more than the call itself. ``running`` says
    whether the deployment has a running replica now (the Ingress watches Serve's status for it).
    """

    def __init__(self, handle: Any, running: Callable[[], bool] = lambda: True) -> None:
        self._generate = handle.options(stream=True).generate
        self._running = running

    def generate(self, request: LLMRequest) -> ReplyStream:
        if not self._running():
            # Serve's handle would queue the request until a replica is back (minutes for a vLLM engine):
            # an empty deployment is unavailable now, so the route's fallback answers instead.
            return Unavailable("the deployment has no running replica")
        return DeploymentReply(self._generate.remote(request), self._running)


class Unavailable:
    """A reply that never started: its first item raises ``LLMUnavailable``."""

    def __init__(self, why: str) -> None:
        self._why = why

    def __aiter__(self) -> Unavailable:
        return self

    async def __anext__(self) -> Any:
        raise LLMUnavailable(self._why)

    def cancel(self) -> None:
        pass


class DeploymentReply:
    """A Serve response generator that speaks the protocol's exceptions instead of Ray's.

    While it waits for its first item it also watches ``running``: a request already queued when its
    deployment loses its last replica is given up (``LLMUnavailable``), not left waiting for a new engine.
    """

    def __init__(self, response: Any, running: Callable[[], bool] = lambda: True) -> None:
        self._response = response
        self._running = running
        self._started = False

    def __aiter__(self) -> DeploymentReply:
        return self

    async def __anext__(self) -> Any:
        if self._started:
            return await self._next()
        self._started = True
        first = asyncio.ensure_future(self._next())
        try:
            while not (await asyncio.wait({first}, timeout=WATCH_S))[0]:
                if not self._running():  # the caller cancels the response, as for any failure
                    raise LLMUnavailable("the deployment lost its running replicas")
        except BaseException:
            first.cancel()
            raise
        return first.result()

    async def _next(self) -> Any:
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
