"""A route's request defaults applied to the body it sends: a system prompt, sampling values, template switches.

Pure: the ingress calls ``apply_defaults`` for the route that answers (after a fallback, the fallback's
route). The client's body is never changed in place: a fallback starts again from what the client sent.
"""

from __future__ import annotations

from typing import Any

from serve_app.api.requests import Endpoint
from serve_app.config.schema import SAMPLING_DEFAULTS, RouteDefaults

# Where each endpoint takes the longest answer; chat also reads OpenAI's newer name for it.
MAX_TOKENS_KEYS: dict[Endpoint, tuple[str, ...]] = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "completion": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
SYSTEM_ROLES = ("system", "developer")


def apply_defaults(endpoint: Endpoint, body: dict[str, Any], defaults: RouteDefaults) -> dict[str, Any]:
    """``body`` with the route's defaults: the client's values win, except for enforced keys."""
    body = dict(body)
    for key in SAMPLING_DEFAULTS:
        value = getattr(defaults, key)
        if value is None:
            continue
        names = MAX_TOKENS_KEYS[endpoint] if key == "max_tokens" else (key,)
        sent = any(body.get(name) is not None for name in names)
        if key in defaults.enforce:
            for name in names[1:]:
                body.pop(name, None)
            body[names[0]] = value
        elif not sent:
            body[names[0]] = value
    if endpoint == "completion":  # a bare prompt: no system turn, no chat template
        return body
    if defaults.chat_template_kwargs:
        client = body.get("chat_template_kwargs") or {}
        if isinstance(client, dict):  # anything else is the engine's to refuse
            route = defaults.chat_template_kwargs
            enforced = "chat_template_kwargs" in defaults.enforce
            body["chat_template_kwargs"] = {**client, **route} if enforced else {**route, **client}
    if defaults.system_prompt:
        if endpoint == "chat":
            body["messages"] = _with_system_message(body["messages"], defaults.system_prompt,
                                                    defaults.system_prompt_mode)
        else:
            body.update(_with_instructions(body, defaults.system_prompt, defaults.system_prompt_mode))
    return body


def _with_system_message(messages: list[dict[str, Any]], prompt: str, mode: str) -> list[dict[str, Any]]:
    if mode == "replace":
        return [{"role": "system", "content": prompt}, *(m for m in messages if m.get("role") not in SYSTEM_ROLES)]
    first = messages[0]
    # prepend: one system turn, the route's text first. Many chat templates accept a system turn only first.
    if first.get("role") in SYSTEM_ROLES and isinstance(first.get("content"), str):
        return [{**first, "content": f"{prompt}\n\n{first['content']}"}, *messages[1:]]
    if first.get("role") in SYSTEM_ROLES and isinstance(first.get("content"), list):
        return [{**first, "content": [{"type": "text", "text": prompt}, *first["content"]]}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _with_instructions(body: dict[str, Any], prompt: str, mode: str) -> dict[str, Any]:
    """The Responses API's system prompt is ``instructions`` (system turns in ``input`` go too on replace)."""
    client = body.get("instructions")
    if mode == "replace":
        update: dict[str, Any] = {"instructions": prompt}
        if isinstance(body.get("input"), list):
            update["input"] = [item for item in body["input"]
                               if not (isinstance(item, dict) and item.get("role") in SYSTEM_ROLES)]
        return update
    return {"instructions": f"{prompt}\n\n{client}" if isinstance(client, str) and client else prompt}
