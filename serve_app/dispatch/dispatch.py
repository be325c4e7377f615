"""Given a routing decision and the LLM clients, get an answer: the one place the fallback rules live.

The decided route's model is asked first, then the route's fallbacks (serve_app/dispatch/routes.py), until
one answers: a whole answer, or a stream's first chunk, within ``request_timeout_s``. What made a model
not answer is its *cause*:

- ``overloaded`` (Serve's queue is full, or an endpoint's 429): the next model takes it, a spillover;
- ``timeout``, ``unavailable`` (its replica or endpoint is gone), ``error`` (it failed): the next model;
- none: the request itself is wrong (a 4xx from the model): another model would refuse it too, so the
  client gets that answer at once, never a retry.

When no model of the chain answers, the client gets a 429 with Retry-After if capacity was the problem,
else the first model's error (a 503, for a model that is down, with Retry-After too). After a stream's
first chunk the status is sent: a failure ends the stream with an error event in the endpoint's own format.
An in-cluster model whose deployment has no running replica is unavailable at once (serve_app/llm/protocol.py),
rather than queued behind its restart. Every request is recorded once, with what it cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import Endpoint, ParsedRequest
from serve_app.dispatch.defaults import apply_defaults
from serve_app.dispatch.routes import RouteTable
from serve_app.dispatch.stats import RequestRecord
from serve_app.llm.plan import LLMPlan
from serve_app.llm.protocol import LLMClient, LLMOverloaded, LLMRequest, LLMUnavailable, ReplyStream
from serve_app.routing.policy import RoutingDecision

logger = logging.getLogger("ray.serve")

Failed = tuple[str, str]  # (route, cause)


@dataclass(frozen=True)
class Answer:
    """What the ingress sends back: a JSON body (an answer or an error), or a stream that has started."""

    status: int
    headers: dict[str, str]
    body: Any = None
    stream: AsyncIterator[str] | None = None


def failure(exc: BaseException, route: str) -> tuple[str | None, OpenAIError]:
    """Why a route's model did not answer (None: the request itself is wrong) and what a client would be told."""
    if isinstance(exc, OpenAIError):  # the LLM's own answer (Ray wraps it in RayTaskError: take the fields)
        error = OpenAIError(exc.status, exc.message, code=exc.code, param=exc.param, type=exc.type)
        return (None if error.status < 500 else "error"), error
    if isinstance(exc, LLMOverloaded):
        return "overloaded", OpenAIError(503, f"The {route} model is at capacity; retry shortly.", code="overloaded")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", OpenAIError(504, f"The {route} model did not answer in time.", code="timeout")
    if isinstance(exc, LLMUnavailable):
        logger.warning("The %s model is unreachable: %s", route, type(exc).__name__)
        return "unavailable", OpenAIError(503, f"The {route} model's replica is unavailable; retry shortly.",
                                          code="upstream_error")
    logger.error("The %s model failed: %r", route, exc)
    return "error", OpenAIError(500, f"The {route} model failed to answer ({type(exc).__name__}).",
                                code="upstream_error")


def no_answer(failed: list[Failed], errors: list[OpenAIError], retry_after_s: int) -> OpenAIError:
    """What a client is told when no model of its chain answered: 429 if capacity was the problem."""
    if any(cause == "overloaded" for _, cause in failed):
        routes = ", ".join(route for route, _ in failed)
        return OpenAIError(429, f"Every model that could answer this request is at capacity ({routes}); retry after "
                           f"{retry_after_s}s.", code="overloaded")
    return errors[0]


def stream_error(endpoint: Endpoint, error: OpenAIError) -> str:
    """The last event of a stream that failed after its first chunk, in the endpoint's own stream format."""
    if endpoint == "responses":
        event = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return f"event: error\ndata: {json.dumps(event)}\n\n"
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"


def routing_headers(route: str, decision: RoutingDecision, target: LLMPlan, failed: list[Failed]) -> dict[str, str]:
    """Which route answered (after any fallback), what answered it, why, and which routes failed first."""
    headers = {"x-router-category": route, "x-router-model": target.served_model,
               "x-router-reason": decision.reason}
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.4f}"
    if failed:
        headers["x-router-fallback"] = ",".join(r for r, _ in failed)
        headers["x-router-fallback-cause"] = ",".join(cause for _, cause in failed)
    return headers


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def first_item(reply: ReplyStream, timeout_s: float) -> Any:
    """The first item of an LLM's reply within ``timeout_s``; on a timeout or a cancelled request, stop its work."""
    try:
        return await asyncio.wait_for(reply.__anext__(), timeout_s)
    except BaseException:
        reply.cancel()
        raise


@dataclass
class _Request:
    """One request on its way through the chain: what is recorded about it at the end."""

    decision: RoutingDecision
    started: float
    classify_ms: float | None
    failed: list[Failed] = field(default_factory=list)

    def record(self, route: str, status: int, first_token_ms: float | None = None,
               stream: bool = False) -> RequestRecord:
        return RequestRecord(route, self.decision.reason, status, ms_since(self.started), self.classify_ms,
                             first_token_ms, stream, tuple(self.failed))


class Dispatcher:
    """Sends a decided request down its route's chain; ``record`` sees every request once, at its end."""

    def __init__(self, clients: Mapping[str, LLMClient], record: Callable[[RequestRecord], None]) -> None:
        self.clients = clients
        self.record = record

    async def answer(self, table: RouteTable, decision: RoutingDecision, endpoint: Endpoint, parsed: ParsedRequest,
                     started: float, classify_ms: float | None = None) -> Answer:
        config = table.config
        request = _Request(decision, started, classify_ms)
        try:
            chain = table.chain(decision.route, explicit=decision.reason == "explicit", tools=parsed.tools)
        except OpenAIError as exc:  # tools sent to a route whose model cannot call them
            return self._refuse(table, request, exc)
        errors: list[OpenAIError] = []
        for route in chain:
            target = table.targets[route]
            headers = routing_headers(route, decision, target, request.failed)
            # The answering route's defaults, applied to what the client sent (not to a failed route's version).
            sent = apply_defaults(endpoint, parsed.body, table.defaults[route])
            llm_request = LLMRequest(endpoint, {**sent, "model": target.served_model}, parsed.stream)
            reply = self.clients[target.llm].generate(llm_request)
            try:
                first = await first_item(reply, config.request_timeout_s)
            except asyncio.CancelledError:
                self.record(request.record(route, 499))  # the client went away before the first token
                raise
            except Exception as exc:
                cause, error = failure(exc, route)
                if cause is None:  # the request itself is wrong: another model would refuse it too
                    self.record(request.record(route, error.status))
                    return Answer(error.status, headers, error.body())
                request.failed.append((route, cause))
                errors.append(error)
                continue
            if not parsed.stream:
                self.record(request.record(route, 200))
                return Answer(200, headers, first)
            relay = self._relay(endpoint, route, first, reply, request, ms_since(started))
            return Answer(200, headers, stream=relay)
        error = no_answer(request.failed, errors, config.retry_after_s)
        return self._refuse(table, request, error)

    def _refuse(self, table: RouteTable, request: _Request, error: OpenAIError) -> Answer:
        route = request.decision.route
        headers = routing_headers(route, request.decision, table.targets[route], request.failed)
        if error.status in (429, 503):  # capacity, or a model that is down: both worth trying again soon
            headers["retry-after"] = str(table.config.retry_after_s)
        self.record(request.record(route, error.status))
        return Answer(error.status, headers, error.body())

    async def _relay(self, endpoint: Endpoint, route: str, first: str, chunks: ReplyStream, request: _Request,
                     first_token_ms: float) -> AsyncIterator[str]:
        status = 200
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except asyncio.CancelledError:
            status = 499  # the client went away: stop generating for it
            raise
        except Exception as exc:  # after the first token the status is sent: end the stream with an error event
            status = (error := failure(exc, route)[1]).status
            yield stream_error(endpoint, error)
        finally:
            chunks.cancel()
            self.record(request.record(route, status, first_token_ms, stream=True))
