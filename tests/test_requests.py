"""Request parsing: what routing reads, and OpenAI-style errors for what it cannot."""

from __future__ import annotations

import json

import pytest

from serve_app.errors import OpenAIError
from serve_app.requests import parse_json_body, parse_request


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
    assert parsed.routing_texts == ("and now in Rust?", "Write a Python function to sort a list\nand now in Rust?")
    assert parsed.model is None and parsed.stream is False


def test_single_turn_has_one_candidate_and_system_prompt_is_ignored():
    parsed = parse_request("chat", {"model": "auto", "stream": True, "messages": [
        {"role": "system", "content": "Solve math problems"}, {"role": "user", "content": "Hello there"}]})
    assert parsed.routing_texts == ("Hello there",)
    assert parsed.model == "auto" and parsed.stream


def test_context_is_bounded_to_recent_turns():
    msgs = [{"role": "user", "content": f"turn {i}"} for i in range(6)]
    assert parse_request("chat", {"messages": msgs}, context_turns=2).routing_texts == ("turn 5", "turn 4\nturn 5")


def test_completion_prompts():
    assert parse_request("completion", {"prompt": "2+2="}).routing_texts == ("2+2=",)
    assert parse_request("completion", {"prompt": [1, 2, 3]}).routing_texts == ()
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
