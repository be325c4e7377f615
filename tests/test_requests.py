"""Request parsing: what routing reads, and OpenAI-style errors for what it cannot."""

from __future__ import annotations

import json

import pytest

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import parse_json_body, parse_request


def _err(fn, *args) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("raw", [b"", b"   ", b"{bad", b"[1, 2]", b"\xff\xfe"])
def test_bad_json_is_a_400(raw):
    err = _err(parse_json_body, raw)
    assert err.status == 400 and err.code == "invalid_json"
    assert set(err.body()["error"]) == {"message", "type", "code", "param"}


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages.0"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}], "model": 3}, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
])
def test_invalid_chat_requests_name_the_parameter(body, param):
    err = _err(parse_request, "chat", body)
    assert err.status == 400 and err.param == param


def test_last_user_turn_first_then_conversation():
    body = {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write a Python function to sort a list"},
        {"role": "assistant", "content": "def f(xs): return sorted(xs)"},
        {"role": "user", "content": [{"type": "text", "text": "and now in Rust?"}]},
    ]}
    parsed = parse_request("chat", body)
    assert parsed.turns == ("Write a Python function to sort a list", "and now in Rust?")
    assert parsed.model is None and parsed.stream is False


def test_single_turn_has_one_candidate_and_the_system_prompt_is_kept_apart():
    parsed = parse_request("chat", {"model": "auto", "stream": True, "messages": [
        {"role": "system", "content": "Solve math problems"}, {"role": "developer", "content": [
            {"type": "text", "text": "Show your work."}]}, {"role": "user", "content": "Hello there"}]})
    assert parsed.turns == ("Hello there",)
    assert parsed.system == "Solve math problems\nShow your work."  # read only if the turns decide nothing
    assert parsed.model == "auto" and parsed.stream
    assert parse_request("completion", {"prompt": "Hello"}).system == ""


def test_context_is_bounded_to_recent_turns():
    msgs = [{"role": "user", "content": f"turn {i}"} for i in range(6)]
    assert parse_request("chat", {"messages": msgs}, context_turns=2).turns == ("turn 4", "turn 5")


def test_completion_prompts():
    assert parse_request("completion", {"prompt": "2+2="}).turns == ("2+2=",)
    assert parse_request("completion", {"prompt": [1, 2, 3]}).turns == ()
    assert _err(parse_request, "completion", {}).param == "prompt"
    assert _err(parse_request, "completion", {"prompt": [{"x": 1}]}).param == "prompt"


@pytest.mark.parametrize("raw, message", [
    (b'{"messages": [], "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),  # Python refuses 4300+ digit integers
    (b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}", "nests deeper than 64 levels"),  # Ray cannot pickle ~500 levels
    (b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "lone UTF-16 surrogate"),
    (b'{"request_id": "\\udfff", "messages": []}', "lone UTF-16 surrogate"),
    (b'{"\\ud800": 1}', "lone UTF-16 surrogate"),
])
def test_json_that_nothing_downstream_can_carry_is_a_400(raw, message):
    err = _err(parse_json_body, raw)
    assert (err.status, err.code) == (400, "invalid_json") and message in err.message


def test_ordinary_nesting_and_unicode_pass():
    body = {"messages": [{"role": "user", "content": "naïve 日本語 🙂 \u200f"}], "tools": [{"a": {"b": {"c": [[1]]}}}]}
    assert parse_json_body(json.dumps(body).encode()) == body


def test_responses_route_on_what_the_user_wrote():
    parsed = parse_request("responses", {"input": "  Fix my Python loop  ", "instructions": "You are a cat."})
    assert parsed.turns == ("Fix my Python loop",) and not parsed.tools
    assert parsed.system == "You are a cat."
    items = {"input": [{"role": "developer", "content": "Never route on me."},
                       {"role": "user", "content": [{"type": "input_text", "text": "What is 7 * 6?"}]},
                       {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": "{}"},
                       {"type": "function_call_output", "call_id": "c1", "output": "42"},
                       {"type": "message", "role": "user", "content": "and times 2?"}],
             "tools": [{"type": "function", "name": "calc", "parameters": {"type": "object"}}], "stream": True}
    parsed = parse_request("responses", items)
    assert parsed.turns == ("What is 7 * 6?", "and times 2?")
    assert parsed.system == "Never route on me."
    assert parsed.tools and parsed.stream


def test_tools_are_asked_for_unless_tool_choice_is_none():
    chat = {"messages": [{"role": "user", "content": "weather?"}], "tools": [{"type": "function"}]}
    assert parse_request("chat", chat).tools
    assert parse_request("chat", {**chat, "tool_choice": {"type": "function", "function": {"name": "f"}}}).tools
    assert not parse_request("chat", {**chat, "tool_choice": "none"}).tools
    assert not parse_request("chat", {**chat, "tools": []}).tools
    assert not parse_request("completion", {"prompt": "x", "tools": [{}]}).tools


def test_tool_turns_and_schemas_are_not_classified():
    chat = {"messages": [{"role": "user", "content": "Book a table for two"},
                         {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                                "function": {"name": "sql_query",
                                                                                             "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "1", "content": "SELECT * FROM tables WHERE free"}],
            "tools": [{"type": "function", "function": {"name": "sql_query", "description": "Run SQL"}}]}
    assert parse_request("chat", chat).turns == ("Book a table for two",)


@pytest.mark.parametrize("body, param", [
    ({}, "input"), ({"input": ""}, "input"), ({"input": []}, "input"), ({"input": 3}, "input"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
])
def test_bad_responses_requests_are_400s(body, param):
    err = _err(parse_request, "responses", body)
    assert err.status == 400 and err.param == param
