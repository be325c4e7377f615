"""End to end: a mixture of an in-cluster vLLM model and an external OpenAI-compatible endpoint.

`serve run examples/external.yaml` (tests/conftest.py `mixed_graph`): general is a vLLM deployment on
this CPU, code is a real HTTP server on loopback (harness/openai_stub.py, which records what it was sent).
Proves the external path end to end with the official `openai` client: routing, the model id and key
sent upstream, route defaults, one pooled connection, streams relayed event by event, upstream errors
passed back OpenAI-style, and fallback to the in-cluster model when the endpoint fails, is full or is gone.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import BASE, ROUTER_KEY, UPSTREAM_KEY

pytestmark = pytest.mark.cluster

CODE = "How do I reverse a linked list in Python?"
GENERAL = "What is the capital of Australia?"
STUB_TEXT = "stub answer from an instant upstream stub answer "  # what the stub says, 8 chunks
AUTH = {"Authorization": f"Bearer {ROUTER_KEY}"}


@pytest.fixture(scope="module")
def client(mixed_graph) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=ROUTER_KEY, max_retries=0, timeout=120)


@pytest.fixture
def endpoint(upstream):
    upstream.mode(reset=True)
    yield upstream
    upstream.mode()  # healthy again for the next test


def _ask(client, text, **kwargs):
    raw = client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "auto"), messages=[{"role": "user", "content": text}],
        max_tokens=kwargs.pop("max_tokens", 8), **kwargs)
    return raw.headers, raw.parse()


def test_models_say_which_is_external(client):
    models = {m.id: m.model_extra for m in client.models.list().data}
    assert models["code"]["backend"] == "external" and models["code"]["endpoint"] == "http://127.0.0.1:9100/v1"
    assert models["code"]["deployment"] is None and models["code"]["served_by"] == "coder-large"
    assert models["general"]["backend"] == "vllm" and models["general"]["deployment"] == "llm-general"


def test_one_model_by_any_name_a_request_may_use(client):
    assert client.models.retrieve("auto").id == "auto"
    assert client.models.retrieve("code").model_extra["served_by"] == "coder-large"
    assert client.models.retrieve("coder-large").id == "code"  # a served model id finds its route
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-unknown")
    assert caught.value.body["code"] == "model_not_found" and "auto" in caught.value.body["message"]


def test_a_code_question_goes_to_the_endpoint_with_its_model_key_and_route_defaults(client, endpoint):
    headers, reply = _ask(client, CODE, temperature=1.5)
    assert headers["x-router-category"] == "code" and headers["x-router-model"] == "coder-large"
    assert reply.choices[0].message.content == STUB_TEXT
    sent = endpoint.seen()["recent"][-1]
    assert sent["path"] == "/v1/chat/completions" and sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    body = sent["body"]
    assert body["model"] == "coder-large" and body["temperature"] == 0.2  # enforced by the code route
    assert body["messages"][0]["role"] == "system" and body["messages"][0]["content"].startswith("You are a senior")
    assert body["messages"][1:] == [{"role": "user", "content": CODE}] and body["max_tokens"] == 8


def test_a_general_question_stays_in_the_cluster(client, endpoint):
    headers, reply = _ask(client, GENERAL)
    assert headers["x-router-category"] == "general" and headers["x-router-model"] == "SmolLM2-135M-Instruct"
    assert reply.choices[0].message.content and endpoint.seen()["requests"] == 0


def test_external_streams_are_relayed_event_by_event(client, endpoint):
    stream = client.chat.completions.create(model="code", messages=[{"role": "user", "content": CODE}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == STUB_TEXT and len(deltas) == 8  # one event per chunk the endpoint sent
    assert chunks[-1].usage.completion_tokens == 8


def test_one_pooled_connection_carries_many_requests(client, endpoint):
    for _ in range(20):
        _ask(client, CODE, model="code")
    seen = endpoint.seen()
    assert seen["requests"] == 20 and seen["connections"] <= 2  # keep-alive, not a client per request


def test_the_responses_api_reaches_the_endpoint(client, endpoint):
    response = client.responses.create(model="code", input=CODE, max_output_tokens=4)
    assert response.output_text == "stub answer from an "
    sent = endpoint.seen()["recent"][-1]
    assert sent["path"] == "/v1/responses" and sent["body"]["model"] == "coder-large"
    assert sent["body"]["instructions"].startswith("You are a senior")  # the route's system prompt


def test_a_client_error_upstream_comes_back_with_its_status(client, endpoint):
    endpoint.mode(fail_status=400)
    with pytest.raises(openai.BadRequestError) as info:
        _ask(client, CODE)
    error = info.value
    assert "on purpose" in error.body["message"] and error.body["code"] == "stub_failure"
    assert "x-router-fallback" not in error.response.headers  # another model would refuse it too


@pytest.mark.parametrize("status, cause", [(503, "error"), (429, "overloaded")])
def test_a_failing_or_full_endpoint_falls_back_to_the_cluster(client, endpoint, status, cause):
    endpoint.mode(fail_status=status)
    for stream in (False, True):
        body = {"messages": [{"role": "user", "content": CODE}], "max_tokens": 4, "stream": stream}
        r = httpx.post(f"{BASE}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-router-category"] == "general" and r.headers["x-router-fallback"] == "code"
        assert r.headers["x-router-fallback-cause"] == cause
    assert endpoint.seen()["requests"] == 2


def test_a_gone_endpoint_falls_back_and_is_used_again_once_back(client, upstream):
    upstream.stop()
    try:
        headers, reply = _ask(client, CODE)
        assert headers["x-router-category"] == "general" and headers["x-router-fallback-cause"] == "unavailable"
    finally:
        upstream.start()
    headers, _ = _ask(client, CODE)
    assert headers["x-router-category"] == "code" and "x-router-fallback" not in headers


def test_tools_sent_to_a_model_without_tool_calling_get_a_400_naming_the_setting(client, endpoint):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": GENERAL}],
                                       tools=[weather], max_tokens=8)
    body = info.value.body
    assert body["code"] == "tools_not_supported" and body["param"] == "tools"
    assert "Route 'general'" in body["message"] and "cpu_fallback.tool_calling" in body["message"]
    # The external model decides for itself: the request is sent on, tools and all.
    reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": CODE}],
                                           tools=[weather], max_tokens=8)
    assert reply.choices[0].message.content == STUB_TEXT
    assert endpoint.seen()["recent"][-1]["body"]["tools"] == [weather]


def test_stats_count_the_external_route(client):
    stats = httpx.get(f"{BASE}/stats", headers=AUTH, timeout=30).json()
    assert stats["routes"]["code"] >= 20
    causes = stats["model_fallbacks"]["by_cause"]
    assert causes["error"] >= 2 and causes["overloaded"] >= 2 and causes["unavailable"] >= 1
    assert stats["spillovers"] == causes["overloaded"]
