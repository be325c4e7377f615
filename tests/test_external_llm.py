"""The external-endpoint client against a real OpenAI-compatible server on loopback (harness/openai_stub.py).

No cluster: the client the ingress uses, over real HTTP, with a pooled connection, streams, upstream
errors and a dead endpoint. The end-to-end path through a running router is in tests/test_external.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from harness.openai_stub import create_app
from serve_app.api.errors import OpenAIError
from serve_app.dispatch.dispatch import first_item
from serve_app.llm.external import ExternalLLM, api_key, http_pool
from serve_app.llm.plan import LLMPlan
from serve_app.llm.protocol import LLMOverloaded, LLMRequest, LLMUnavailable

KEY = "sk-upstream-test"
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stub():
    """The stub server in a thread of this process, on a free loopback port."""
    port = _free_port()
    app = create_app(api_key=KEY)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the stub server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app.state.stub
    server.should_exit = True
    thread.join(10)


def _plan(endpoint: str, api_key_env: str | None = "STUB_KEY") -> LLMPlan:
    return LLMPlan("hosted", None, "stub-model", "stub-model", "stub-model", {}, {}, {}, tools=True,
                   endpoint=endpoint, api_key_env=api_key_env)


def _run(coro):
    return asyncio.run(coro)


async def _with_client(endpoint: str, key: str | None, work):
    async with http_pool() as pool:
        return await work(ExternalLLM(pool, _plan(f"{endpoint}/v1"), key))


def test_whole_answers_reuse_one_pooled_connection(stub):
    base, state = stub
    state.fail_status, state.delay_s = None, 0

    async def work(llm):
        return [await llm.generate(LLMRequest("chat", CHAT, False)).__anext__() for _ in range(10)]

    before = len(state.peers)
    answers = _run(_with_client(base, KEY, work))
    assert all(a["object"] == "chat.completion" and a["choices"][0]["message"]["content"] for a in answers)
    assert len(state.peers) - before == 1  # keep-alive: ten requests, one connection
    assert state.seen[-1]["authorization"] == f"Bearer {KEY}" and state.seen[-1]["body"] == CHAT


def test_streams_come_event_by_event(stub):
    base, state = stub
    state.fail_status, state.delay_s = None, 0

    async def work(llm):
        return [event async for event in llm.generate(LLMRequest("chat", {**CHAT, "stream": True}, True))]

    events = _run(_with_client(base, KEY, work))
    assert events[-1] == "data: [DONE]\n\n"
    assert all(e.startswith("data: ") and e.endswith("\n\n") and e.count("data: ") == 1 for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "stub answer from an "


@pytest.mark.parametrize("status, raised, cause", [
    (400, OpenAIError, 400),  # the client's mistake: passed through, status and message
    (503, OpenAIError, 503),  # the endpoint failing: the ingress falls back
    (429, LLMOverloaded, None),  # capacity: a spillover, like a full Serve queue
])
def test_upstream_errors_keep_their_status(stub, status, raised, cause):
    base, state = stub
    state.fail_status, state.delay_s = status, 0

    async def work(llm):
        with pytest.raises(raised) as whole:
            await llm.generate(LLMRequest("chat", CHAT, False)).__anext__()
        with pytest.raises(raised) as streamed:
            await llm.generate(LLMRequest("chat", {**CHAT, "stream": True}, True)).__anext__()
        return whole.value, streamed.value

    try:
        for error in _run(_with_client(base, KEY, work)):
            if cause is not None:
                assert error.status == cause and "on purpose" in error.message
    finally:
        state.fail_status = None


def test_a_wrong_key_is_the_operators_problem_not_the_clients(stub):
    base, state = stub
    state.fail_status = None

    async def work(llm):
        with pytest.raises(OpenAIError) as caught:
            await llm.generate(LLMRequest("chat", CHAT, False)).__anext__()
        return caught.value

    error = _run(_with_client(base, "sk-wrong", work))
    assert error.status == 502 and "api_key_env" in error.message  # not a 401 the client would blame itself for


def test_a_dead_endpoint_is_unavailable():
    async def work(llm):
        with pytest.raises(LLMUnavailable):
            await llm.generate(LLMRequest("chat", CHAT, False)).__anext__()
        with pytest.raises(LLMUnavailable):
            await llm.generate(LLMRequest("chat", {**CHAT, "stream": True}, True)).__anext__()

    _run(_with_client(f"http://127.0.0.1:{_free_port()}", None, work))


def test_cancel_stops_a_slow_answer(stub):
    base, state = stub
    state.fail_status, state.delay_s = None, 5

    async def work(llm):
        reply = llm.generate(LLMRequest("chat", CHAT, False))
        with pytest.raises(asyncio.TimeoutError):
            await first_item(reply, 0.3)  # as the ingress waits: on a timeout it cancels the reply
        with pytest.raises(StopAsyncIteration):  # the request was abandoned, its connection's request closed
            await reply.__anext__()
        return True

    try:
        assert _run(_with_client(base, KEY, work))
    finally:
        state.delay_s = 0


def test_the_key_comes_from_the_named_variable_only():
    plan = _plan("http://127.0.0.1:1/v1")
    assert api_key(plan, {"STUB_KEY": "sk-1"}) == "sk-1"
    assert api_key(_plan("http://127.0.0.1:1/v1", None), {}) is None
    with pytest.raises(RuntimeError, match=r"\$STUB_KEY, which is not set"):
        api_key(plan, {})

