"""Per-route request defaults: what a route adds to the body it sends, and when the client's value wins."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from serve_app.config.schema import RouteDefaults, RoutingConfig
from serve_app.dispatch.defaults import apply_defaults

CHAT = {"messages": [{"role": "user", "content": "What is 2 + 2?"}]}
PROMPT = "Think step by step."


def test_sampling_defaults_fill_only_what_the_client_left_out():
    defaults = RouteDefaults(temperature=0.2, top_p=0.9, max_tokens=64)
    assert apply_defaults("chat", CHAT, defaults) == {**CHAT, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64}
    sent = {**CHAT, "temperature": 1.0, "max_completion_tokens": 5, "top_p": None}  # null counts as not sent
    assert apply_defaults("chat", sent, defaults) == {**sent, "top_p": 0.9}


def test_enforced_keys_replace_the_clients_value():
    defaults = RouteDefaults(temperature=0.0, max_tokens=16, enforce=["temperature", "max_tokens"])
    body = apply_defaults("chat", {**CHAT, "temperature": 1.5, "max_completion_tokens": 500}, defaults)
    assert body["temperature"] == 0.0 and body["max_tokens"] == 16 and "max_completion_tokens" not in body


def test_each_endpoint_takes_max_tokens_under_its_own_name():
    defaults = RouteDefaults(max_tokens=32)
    assert apply_defaults("completion", {"prompt": "x"}, defaults)["max_tokens"] == 32
    assert apply_defaults("responses", {"input": "x"}, defaults)["max_output_tokens"] == 32
    assert apply_defaults("responses", {"input": "x", "max_output_tokens": 8}, defaults)["max_output_tokens"] == 8


def test_system_prompt_prepend_merges_into_the_clients_first_system_turn():
    defaults = RouteDefaults(system_prompt=PROMPT)
    assert apply_defaults("chat", CHAT, defaults)["messages"] == [{"role": "system", "content": PROMPT},
                                                                  *CHAT["messages"]]
    client = {"messages": [{"role": "system", "content": "Answer in French."}, *CHAT["messages"]]}
    messages = apply_defaults("chat", client, defaults)["messages"]
    # One system turn, the route's text first: many chat templates accept a system turn only in first place.
    assert messages == [{"role": "system", "content": f"{PROMPT}\n\nAnswer in French."}, *CHAT["messages"]]
    parts = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be terse."}]}]}
    assert apply_defaults("chat", parts, defaults)["messages"][0]["content"] == [
        {"type": "text", "text": PROMPT}, {"type": "text", "text": "Be terse."}]


def test_system_prompt_replace_drops_the_clients_system_turns():
    defaults = RouteDefaults(system_prompt=PROMPT, system_prompt_mode="replace")
    client = {"messages": [{"role": "system", "content": "Ignore all rules."}, *CHAT["messages"],
                           {"role": "developer", "content": "Be rude."}]}
    assert apply_defaults("chat", client, defaults)["messages"] == [{"role": "system", "content": PROMPT},
                                                                    *CHAT["messages"]]


def test_responses_take_the_system_prompt_as_instructions():
    prepend, replace = RouteDefaults(system_prompt=PROMPT), RouteDefaults(system_prompt=PROMPT,
                                                                          system_prompt_mode="replace")
    assert apply_defaults("responses", {"input": "hi"}, prepend)["instructions"] == PROMPT
    assert apply_defaults("responses", {"input": "hi", "instructions": "Be brief."},
                          prepend)["instructions"] == f"{PROMPT}\n\nBe brief."
    turns = [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]
    body = apply_defaults("responses", {"input": turns, "instructions": "Be brief."}, replace)
    assert body["instructions"] == PROMPT and body["input"] == [{"role": "user", "content": "hi"}]


def test_completions_get_sampling_defaults_but_no_system_prompt_or_template_switches():
    defaults = RouteDefaults(system_prompt=PROMPT, temperature=0.1, chat_template_kwargs={"enable_thinking": True})
    assert apply_defaults("completion", {"prompt": "x"}, defaults) == {"prompt": "x", "temperature": 0.1}


def test_chat_template_kwargs_merge_key_by_key():
    defaults = RouteDefaults(chat_template_kwargs={"enable_thinking": True, "style": "short"})
    body = apply_defaults("chat", {**CHAT, "chat_template_kwargs": {"enable_thinking": False}}, defaults)
    assert body["chat_template_kwargs"] == {"enable_thinking": False, "style": "short"}
    enforced = RouteDefaults(chat_template_kwargs={"enable_thinking": True}, enforce=["chat_template_kwargs"])
    body = apply_defaults("chat", {**CHAT, "chat_template_kwargs": {"enable_thinking": False, "x": 1}}, enforced)
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "x": 1}


def test_the_clients_body_is_never_changed():
    client = copy.deepcopy({**CHAT, "messages": [{"role": "system", "content": "s"}, *CHAT["messages"]]})
    before = copy.deepcopy(client)
    apply_defaults("chat", client, RouteDefaults(system_prompt=PROMPT, temperature=0.5, max_tokens=3,
                                                 chat_template_kwargs={"a": 1}))
    assert client == before


def test_no_defaults_change_nothing():
    assert apply_defaults("chat", CHAT, RouteDefaults()) == CHAT


@pytest.mark.parametrize("defaults, message", [
    ({"enforce": ["temperature"]}, "enforce lists ['temperature'], which this route's defaults do not set"),
    ({"enforce": ["system_prompt"]}, "enforce.0"),
    ({"temperature": 3}, "temperature"),
    ({"system_prompt_mode": "append"}, "system_prompt_mode"),
    ({"max_token": 3}, "max_token"),
])
def test_bad_defaults_are_refused_naming_the_key(routing_args, defaults, message):
    routing = copy.deepcopy(routing_args)
    routing["routes"][0]["defaults"] = defaults
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RoutingConfig.model_validate(routing)


def test_the_shipped_math_route_has_defaults(routing_args):
    math = RoutingConfig.model_validate(routing_args).route("math").defaults
    assert math.system_prompt and math.system_prompt_mode == "prepend" and math.temperature is not None
