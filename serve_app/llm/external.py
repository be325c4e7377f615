"""An LLM that already runs elsewhere: an OpenAI-compatible endpoint, called over HTTP by the ingress.

It speaks the same contract as an in-cluster deployment (serve_app/llm/protocol.py), so timeouts,
fallback and statistics treat both alike. One pooled ``aiohttp.ClientSession`` per ingress replica carries
every external call (keep-alive connections, never a client per request). aiohttp rather than httpx: on
loopback httpx spent 2.5 ms of CPU per request against aiohttp's 0.12 (its pool checks every idle
connection's socket on each request), and aiohttp is what Ray itself runs. Streams are relayed event by
event as they arrive. The endpoint's own errors reach the client with its status, OpenAI-style; those
that are the operator's to fix (a wrong key, a wrong model id) become a 502, and the request falls back.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from serve_app.api.errors import OpenAIError
from serve_app.llm.plan import LLMPlan
from serve_app.llm.protocol import LLMOverloaded, LLMRequest, LLMUnavailable

PATHS = {"chat": "/chat/completions", "completion": "/completions", "responses": "/responses"}
# The router's waits (request_timeout_s) bound the answer; this bounds what no answer can come without.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0)
MAX_CONNECTIONS = 1024
KEEPALIVE_S = 60.0
READ_BUFFER = 1 << 20  # one SSE line may hold a whole tool call's arguments
OPERATOR_ERRORS = (401, 403, 404)  # the router's key or the configured model id: not the client's doing


def http_pool() -> aiohttp.ClientSession:
    """The one HTTP client an ingress replica shares across its external LLMs (made on its event loop)."""
    return aiohttp.ClientSession(timeout=TIMEOUT, read_bufsize=READ_BUFFER, connector=aiohttp.TCPConnector(
        limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S))


def api_key(llm: LLMPlan, environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The key named by ``api_key_env``; a name that is not set fails the replica's start, saying which."""
    if llm.api_key_env is None:
        return None
    key = environ.get(llm.api_key_env)
    if not key:
        raise RuntimeError(f"llm {llm.llm!r} reads its API key from ${llm.api_key_env}, which is not set in the "
                           "Ingress replicas' environment (export it before `serve run`, or set it in the "
                           "application's runtime_env on a cluster)")
    return key


class ExternalLLM:
    def __init__(self, pool: aiohttp.ClientSession, llm: LLMPlan, key: str | None) -> None:
        self._pool = pool
        self._llm = llm
        self._headers = {"authorization": f"Bearer {key}"} if key else {}

    def generate(self, request: LLMRequest) -> ExternalStream:
        """The answer as the protocol streams it; ``.cancel()`` closes the connection's request."""
        return ExternalStream(self._events(request) if request.stream else self._whole(request))

    async def _whole(self, request: LLMRequest) -> AsyncIterator[dict[str, Any]]:
        yield await self._complete(request)

    async def _complete(self, request: LLMRequest) -> dict[str, Any]:
        try:
            async with self._post(request) as response:
                content = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from None
        if not 200 <= response.status < 300:
            raise self._upstream_error(response.status, content)
        try:
            return json.loads(content)
        except ValueError:
            raise OpenAIError(502, f"The {self._llm.llm} endpoint answered with a body that is not JSON.",
                              code="upstream_error") from None

    async def _events(self, request: LLMRequest) -> AsyncIterator[str]:
        """The endpoint's server-sent events, one whole event (``data: ...`` and a blank line) at a time."""
        try:
            async with self._post(request) as response:
                if not 200 <= response.status < 300:
                    raise self._upstream_error(response.status, await response.read())
                event: list[str] = []
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line:
                        event.append(line)
                    elif event:
                        yield "\n".join(event) + "\n\n"
                        event = []
                if event:
                    yield "\n".join(event) + "\n\n"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from None

    def _post(self, request: LLMRequest) -> Any:
        return self._pool.post(self._url(request), json=request.body, headers=self._headers, allow_redirects=False)

    def _url(self, request: LLMRequest) -> str:
        return self._llm.endpoint + PATHS[request.endpoint]

    def _transport_error(self, exc: Exception) -> Exception:
        # Nothing was sent (no connection): the request may go to a fallback unchanged.
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
            return LLMUnavailable(f"{self._llm.endpoint}: {type(exc).__name__}")
        return OpenAIError(502, f"The {self._llm.llm} endpoint broke off ({type(exc).__name__}).",
                           code="upstream_error")

    def _upstream_error(self, status: int, content: bytes) -> Exception:
        message, code, param, kind = _error_fields(content)
        if status == 429:
            return LLMOverloaded(message)
        if status in OPERATOR_ERRORS or status < 400:
            return OpenAIError(502, f"The {self._llm.llm} endpoint refused the router's request ({status}: "
                               f"{message}); check its endpoint, model and api_key_env.", code="upstream_error")
        return OpenAIError(status, message or f"The {self._llm.llm} endpoint answered {status}.",
                           code=code, param=param, type=kind)


class ExternalStream:
    """An endpoint's answer as the ingress iterates it; ``cancel()`` closes the HTTP response."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self._events = events

    def __aiter__(self) -> ExternalStream:
        return self

    async def __anext__(self) -> Any:
        return await self._events.__anext__()

    def cancel(self) -> None:
        try:
            asyncio.ensure_future(self._events.aclose())
        except RuntimeError:  # no running loop: the generator is collected with the request
            pass


def _error_fields(content: bytes) -> tuple[str, str | None, str | None, str | None]:
    """The message, code, param and type of an OpenAI-style error body, or its text."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code = error.get("code")
        return (str(error.get("message") or ""), str(code) if code is not None else None,
                error.get("param") if isinstance(error.get("param"), str) else None,
                error.get("type") if isinstance(error.get("type"), str) else None)
    return content.decode("utf-8", "replace")[:500].strip(), None, None, None
