"""The dispatch rules, fast: fallback order, spillover, 429 + Retry-After, the failure -> cause/status mapping,
stream errors and what is recorded, with in-process fakes of the ingress<->LLM protocol (no Ray, no model).

The same rules are proven end to end on the running graph by tests/test_error_paths.py, with real replicas
stopped and killed; these tests cover every cause and chain shape in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import parse_request
from serve_app.config.graph import plan
from serve_app.config.schema import RouterConfig, RoutingConfig
from serve_app.dispatch.dispatch import Answer, Dispatcher
from serve_app.dispatch.routes import RouteTable
from serve_app.dispatch.stats import RequestRecord
from serve_app.llm.protocol import DeploymentLLM, LLMOverloaded, LLMRequest, LLMUnavailable
from serve_app.routing.policy import RoutingDecision

WHOLE = {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
CHUNKS = ['data: {"choices": [{"delta": {"content": "h"}}]}\n\n', 'data: {"choices": [{"delta": {"content": "i"}}]}'
          '\n\n', "data: [DONE]\n\n"]
HANG = object()  # a model that never starts answering


class FakeReply:
    """What an LLM client returns: iterate for the items; ``cancel()`` stops it (and is remembered)."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self.cancelled = False

    def __aiter__(self) -> FakeReply:
        return self

    async def __anext__(self) -> Any:
        return await self._items.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeLLM:
    """One LLM of the protocol: answers whole or streamed, or fails as told, before or after its first item.

    ``fail``: an exception raised instead of the first item (HANG: never answers); ``fail_after_first``: one
    raised after the first chunk of a stream.
    """

    def __init__(self, fail: Any = None, fail_after_first: BaseException | None = None) -> None:
        self.fail = fail
        self.fail_after_first = fail_after_first
        self.requests: list[LLMRequest] = []
        self.replies: list[FakeReply] = []

    def generate(self, request: LLMRequest) -> FakeReply:
        self.requests.append(request)
        self.replies.append(reply := FakeReply(self._items(request)))
        return reply

    async def _items(self, request: LLMRequest) -> AsyncIterator[Any]:
        if self.fail is HANG:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        if not request.stream:
            yield {**WHOLE, "model": request.body["model"]}
            return
        yield CHUNKS[0]
        if self.fail_after_first is not None:
            raise self.fail_after_first
        for chunk in CHUNKS[1:]:
            yield chunk


@pytest.fixture
def table(router_args, routing_args):
    """The shipped routing block on the CPU plan (every route has tool calling), with a short request timeout."""
    routing = RoutingConfig.model_validate({**routing_args, "request_timeout_s": 0.05, "retry_after_s": 3})
    return RouteTable(routing, plan(RouterConfig.model_validate(router_args), "cpu").llms)


def _table(router_args, routing_args, accelerator="cpu", **routing) -> RouteTable:
    config = RoutingConfig.model_validate({**routing_args, "request_timeout_s": 0.05, **routing})
    return RouteTable(config, plan(RouterConfig.model_validate(router_args), accelerator).llms)


def _fakes(**llms: FakeLLM) -> dict[str, FakeLLM]:
    return {name: llms.get(name, FakeLLM()) for name in ("code", "math", "general")}


def _answer(table: RouteTable, fakes: dict[str, FakeLLM], route: str = "code", reason: str = "classified",
            endpoint: str = "chat", stream: bool = False, **body) -> tuple[Answer, list[RequestRecord]]:
    records: list[RequestRecord] = []
    body = {"messages": [{"role": "user", "content": "Sort a list in Python"}], "stream": stream, **body}
    if endpoint == "responses":
        body = {"input": "Sort a list in Python", "stream": stream, **body}
        body.pop("messages")
    parsed = parse_request(endpoint, body)
    decision = RoutingDecision(route, reason, 0.5 if reason == "classified" else None)

    async def run() -> Answer:
        answer = await Dispatcher(fakes, records.append).answer(table, decision, endpoint, parsed, 0.0, 1.5)
        if answer.stream is not None:
            answer = Answer(answer.status, answer.headers, [chunk async for chunk in answer.stream])
        return answer

    return asyncio.run(run()), records


# ---- the decided route answers ---------------------------------------------------------------------------

def test_the_decided_route_answers_whole_and_says_why(table):
    fakes = _fakes()
    answer, [record] = _answer(table, fakes)
    assert answer.status == 200 and answer.body["model"] == table.targets["code"].served_model
    assert answer.headers == {"x-router-category": "code", "x-router-model": table.targets["code"].served_model,
                              "x-router-reason": "classified", "x-router-score": "0.5000"}
    [sent] = fakes["code"].requests
    assert (sent.endpoint, sent.stream, sent.body["model"]) == ("chat", False, table.targets["code"].served_model)
    assert (record.route, record.reason, record.status, record.classify_ms, record.stream, record.failed) == (
        "code", "classified", 200, 1.5, False, ())
    assert not fakes["math"].requests and not fakes["general"].requests


def test_a_stream_is_relayed_whole_and_recorded_when_it_ends(table):
    fakes = _fakes()
    answer, [record] = _answer(table, fakes, stream=True)
    assert answer.status == 200 and answer.body == CHUNKS
    assert record.stream and record.status == 200 and record.first_token_ms is not None
    assert fakes["code"].replies[0].cancelled  # the relay always releases the reply, finished or not


def test_the_answering_routes_defaults_apply_to_what_the_client_sent(table):
    fakes = _fakes(math=FakeLLM(fail=LLMUnavailable("gone")))
    _answer(table, fakes, route="math")
    math_prompt = {"role": "system", "content": table.defaults["math"].system_prompt}
    assert fakes["math"].requests[0].body["messages"][0] == math_prompt  # the shipped math route has one
    # general answers in math's place: with general's defaults, not with math's system prompt.
    assert fakes["general"].requests[0].body["messages"] == [{"role": "user", "content": "Sort a list in Python"}]


# ---- a model that cannot answer: its cause, and the next route ------------------------------------------

@pytest.mark.parametrize("fail, cause", [
    (LLMOverloaded("queue full"), "overloaded"),  # a spillover
    (LLMUnavailable("replica died"), "unavailable"),
    (HANG, "timeout"),
    (RuntimeError("engine crashed"), "error"),
    (OpenAIError(500, "engine failed"), "error"),  # the model's own 5xx
])
def test_each_cause_falls_back_to_the_next_route(table, fail, cause):
    fakes = _fakes(code=FakeLLM(fail=fail))
    answer, [record] = _answer(table, fakes)
    general = table.targets["general"].served_model
    assert answer.status == 200 and answer.body["model"] == general
    assert answer.headers["x-router-category"] == "general" and answer.headers["x-router-reason"] == "classified"
    assert answer.headers["x-router-fallback"] == "code" and answer.headers["x-router-fallback-cause"] == cause
    assert (record.route, record.status, record.failed) == ("general", 200, (("code", cause),))
    assert fakes["code"].replies[0].cancelled  # what did not answer is stopped, not left running
    assert fakes["general"].requests[0].body["model"] == general


def test_a_client_error_from_the_model_is_never_retried(table):
    fakes = _fakes(code=FakeLLM(fail=OpenAIError(400, "temperature must be >= 0", param="temperature")))
    answer, [record] = _answer(table, fakes, temperature=-3)
    assert answer.status == 400 and answer.body["error"]["param"] == "temperature"
    assert "x-router-fallback" not in answer.headers and answer.headers["x-router-category"] == "code"
    assert not fakes["general"].requests and record.status == 400 and record.failed == ()


def test_a_full_chain_is_a_429_with_retry_after(table):
    fakes = _fakes(code=FakeLLM(fail=LLMOverloaded("full")), general=FakeLLM(fail=LLMOverloaded("full")))
    answer, [record] = _answer(table, fakes)
    assert answer.status == 429 and answer.headers["retry-after"] == "3"
    assert answer.body["error"]["type"] == "rate_limit_error" and "code, general" in answer.body["error"]["message"]
    assert answer.headers["x-router-category"] == "code"  # the decided route, when no model answered
    assert answer.headers["x-router-fallback-cause"] == "overloaded,overloaded"
    assert (record.route, record.status, record.failed) == ("code", 429, (("code", "overloaded"),
                                                                          ("general", "overloaded")))


def test_capacity_anywhere_in_the_chain_makes_it_a_429(table):
    fakes = _fakes(code=FakeLLM(fail=HANG), general=FakeLLM(fail=LLMOverloaded("full")))
    answer, _ = _answer(table, fakes)
    assert answer.status == 429 and answer.headers["x-router-fallback-cause"] == "timeout,overloaded"


@pytest.mark.parametrize("fail, status, code, retry", [
    (LLMUnavailable("gone"), 503, "upstream_error", True),  # down: worth trying again soon
    (HANG, 504, "timeout", False),
    (RuntimeError("boom"), 500, "upstream_error", False),
])
def test_a_chain_that_failed_otherwise_gets_the_first_models_error(table, fail, status, code, retry):
    fakes = _fakes(code=FakeLLM(fail=fail), general=FakeLLM(fail=LLMUnavailable("gone too")))
    answer, [record] = _answer(table, fakes)
    assert answer.status == status and answer.body["error"]["code"] == code
    assert ("retry-after" in answer.headers) == retry and "Traceback" not in json.dumps(answer.body)
    assert record.status == status and [c for _, c in record.failed][1] == "unavailable"


def test_the_default_route_has_no_fallback_of_its_own(table):
    fakes = _fakes(general=FakeLLM(fail=LLMUnavailable("gone")))
    answer, [record] = _answer(table, fakes, route="general")
    assert answer.status == 503 and record.failed == (("general", "unavailable"),)
    assert not fakes["code"].requests and not fakes["math"].requests


# ---- chain shapes ---------------------------------------------------------------------------------------

def test_a_named_model_is_not_redirected_unless_the_block_says_so(router_args, routing_args):
    fakes = _fakes(code=FakeLLM(fail=LLMUnavailable("gone")))
    answer, _ = _answer(_table(router_args, routing_args), fakes, reason="explicit")
    assert answer.status == 503 and not fakes["general"].requests
    answer, _ = _answer(_table(router_args, routing_args, fallback_explicit=True), fakes, reason="explicit")
    assert answer.status == 200 and answer.headers["x-router-reason"] == "explicit"
    assert "x-router-score" not in answer.headers


def test_a_configured_chain_is_tried_in_order_once_per_llm(router_args, routing_args):
    routes = [{**r, "fallbacks": ["math", "general"]} if r["name"] == "code" else r for r in routing_args["routes"]]
    table = _table(router_args, {**routing_args, "routes": routes})
    fakes = _fakes(code=FakeLLM(fail=LLMOverloaded("full")), math=FakeLLM(fail=HANG))
    answer, [record] = _answer(table, fakes)
    assert answer.status == 200 and record.failed == (("code", "overloaded"), ("math", "timeout"))
    assert answer.headers["x-router-fallback"] == "code,math" and answer.headers["x-router-category"] == "general"
    # math answered by general's LLM: once general failed for the first route it is not asked again.
    shared = [{**r, "llm": "general"} if r["name"] == "math" else r for r in routes]
    fakes = _fakes(code=FakeLLM(fail=LLMOverloaded("full")), general=FakeLLM(fail=LLMOverloaded("full")))
    answer, _ = _answer(_table(router_args, {**routing_args, "routes": shared}), fakes)
    assert answer.status == 429 and len(fakes["general"].requests) == 1


TOOLS = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object", "properties": {}}}}]


def test_tools_only_go_to_models_that_can_call_them(router_args, routing_args):
    """GPU plan of the shipped config: only the general model (Qwen2.5, hermes) calls tools."""
    table = _table(router_args, routing_args, accelerator="gpu")
    fakes = _fakes()
    answer, [record] = _answer(table, fakes, tools=TOOLS)
    assert answer.status == 400 and answer.body["error"]["code"] == "tools_not_supported"
    assert answer.headers["x-router-category"] == "code" and record.status == 400
    assert not any(f.requests for f in fakes.values())
    answer, _ = _answer(table, fakes, tools=TOOLS, tool_choice="none")  # no tools asked for: code answers
    assert answer.status == 200 and answer.headers["x-router-category"] == "code"


def test_a_fallback_without_tool_calling_is_skipped(router_args, routing_args):
    args = {**router_args, "llms": [{**llm, "tool_calling": {"parser": "hermes"}} if llm["name"] == "code" else llm
                                    for llm in router_args["llms"]]}
    routes = [{**r, "fallbacks": ["math", "general"]} if r["name"] == "code" else r for r in routing_args["routes"]]
    config = RoutingConfig.model_validate({**routing_args, "routes": routes, "request_timeout_s": 0.05})
    table = RouteTable(config, plan(RouterConfig.model_validate(args), "gpu").llms)
    fakes = _fakes(code=FakeLLM(fail=LLMUnavailable("gone")))
    answer, [record] = _answer(table, fakes, tools=TOOLS)
    assert answer.status == 200 and record.failed == (("code", "unavailable"),)
    assert answer.headers["x-router-category"] == "general" and not fakes["math"].requests


# ---- streams --------------------------------------------------------------------------------------------

def test_a_stream_that_fails_before_its_first_chunk_falls_back(table):
    fakes = _fakes(code=FakeLLM(fail=LLMOverloaded("full")))
    answer, [record] = _answer(table, fakes, stream=True)
    assert answer.status == 200 and answer.body == CHUNKS and answer.headers["x-router-fallback-cause"] == "overloaded"
    assert record.stream and record.route == "general"


def test_a_stream_cut_after_its_first_chunk_ends_with_an_error_event(table):
    fakes = _fakes(code=FakeLLM(fail_after_first=LLMUnavailable("replica died")))
    answer, [record] = _answer(table, fakes, stream=True)
    assert answer.status == 200 and answer.body[0] == CHUNKS[0]
    error_event, done = answer.body[1].split("\n\n")[:2]
    assert json.loads(error_event.removeprefix("data: "))["error"]["type"] == "service_unavailable_error"
    assert done == "data: [DONE]" and record.status == 503 and record.stream
    assert not fakes["general"].requests  # the status was sent: no fallback after the first token


def test_a_responses_stream_ends_with_its_own_error_event(table):
    fakes = _fakes(code=FakeLLM(fail_after_first=RuntimeError("boom")))
    answer, [record] = _answer(table, fakes, endpoint="responses", stream=True)
    event = answer.body[-1]
    assert event.startswith("event: error\ndata: ") and json.loads(event.split("data: ", 1)[1])["type"] == "error"
    assert record.status == 500


def test_a_client_that_leaves_before_the_first_token_is_recorded_as_499(table):
    fakes = _fakes(code=FakeLLM(fail=HANG))
    records: list[RequestRecord] = []
    table = RouteTable(table.config.model_copy(update={"request_timeout_s": 60}), {
        t.llm: t for t in table.targets.values()})
    parsed = parse_request("chat", {"messages": [{"role": "user", "content": "hi"}]})

    async def run() -> None:
        task = asyncio.ensure_future(Dispatcher(fakes, records.append).answer(
            table, RoutingDecision("code", "classified"), "chat", parsed, 0.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert [r.status for r in records] == [499] and fakes["code"].replies[0].cancelled
    assert not fakes["general"].requests


# ---- an in-cluster LLM whose deployment has no running replica --------------------------------------------

class FakeHandle:
    """Serve's handle as DeploymentLLM uses it: ``options(stream=True).generate.remote``; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def options(self, stream: bool) -> FakeHandle:
        assert stream  # one streaming call, whole answers too
        return self

    @property
    def generate(self) -> FakeHandle:
        return self

    def remote(self, request: LLMRequest) -> FakeReply:
        self.calls += 1
        return FakeReply(FakeLLM()._items(request))


def test_a_deployment_with_no_running_replica_is_routed_around_at_once(table):
    running = {"llm-code": 0}
    handles = {name: FakeHandle() for name in ("code", "math", "general")}
    clients = {name: DeploymentLLM(h, lambda d=f"llm-{name}": running.get(d, 1) > 0) for name, h in handles.items()}
    answer, [record] = _answer(table, clients)
    assert answer.status == 200 and record.failed == (("code", "unavailable"),)
    assert handles["code"].calls == 0 and handles["general"].calls == 1  # nothing queued behind a restart
    running["llm-code"] = 1
    answer, [record] = _answer(table, clients)
    assert answer.headers["x-router-category"] == "code" and handles["code"].calls == 1
    running["llm-general"] = running["llm-code"] = 0  # no fallback left: 503 with Retry-After, at once
    answer, _ = _answer(table, clients)
    assert answer.status == 503 and answer.headers["retry-after"] == "3"


class HangingHandle(FakeHandle):
    """A request Serve has queued behind a restart: its first item never comes."""

    def remote(self, request: LLMRequest) -> FakeReply:
        self.calls += 1
        return FakeReply(FakeLLM(fail=HANG)._items(request))


def test_a_request_queued_when_its_deployment_empties_goes_to_the_fallback(router_args, routing_args):
    table = _table(router_args, routing_args, request_timeout_s=60)
    running = {"llm-code": 1}
    code = HangingHandle()
    clients = {"code": DeploymentLLM(code, lambda: running["llm-code"] > 0),
               "math": DeploymentLLM(FakeHandle()), "general": DeploymentLLM(FakeHandle())}

    async def run() -> Answer:
        records: list[RequestRecord] = []
        parsed = parse_request("chat", {"messages": [{"role": "user", "content": "Sort a list"}]})
        task = asyncio.ensure_future(Dispatcher(clients, records.append).answer(
            table, RoutingDecision("code", "classified", 0.9), "chat", parsed, 0.0))
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting, as Serve's queue would
        running["llm-code"] = 0  # Serve's status: the last replica is gone
        return await asyncio.wait_for(task, 5)

    answer = asyncio.run(run())
    assert answer.status == 200 and answer.headers["x-router-fallback-cause"] == "unavailable"
    assert answer.headers["x-router-category"] == "general" and code.calls == 1
