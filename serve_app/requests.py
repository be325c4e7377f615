"""Request parsing: just enough of an OpenAI request to route it.

The full request (sampling parameters, tools, response_format, ...) is validated by vLLM's own
protocol models in the LLM deployment; here we check only what routing reads, so that a bad
request fails before any model is asked, with an OpenAI-style error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.errors import OpenAIError

Endpoint = Literal["chat", "completion"]
AUTO_MODEL = "auto"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass(frozen=True)
class ParsedRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    model: str | None  # None or "auto": classify
    stream: bool
    # Texts to classify, most specific first: the last user turn, then the recent conversation.
    routing_texts: tuple[str, ...]


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise OpenAIError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def parse_request(endpoint: Endpoint, body: dict[str, Any], context_turns: int = 3) -> ParsedRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("'model' must be a string", "model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    if endpoint == "chat":
        texts = _chat_routing_texts(body.get("messages"), context_turns)
    else:
        texts = _prompt_routing_texts(body.get("prompt"))
    return ParsedRequest(endpoint, body, model or None, bool(stream), texts)


def _chat_routing_texts(messages: Any, context_turns: int) -> tuple[str, ...]:
    if messages is None:
        raise _invalid("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array of message objects", "messages")
    user_turns: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object", f"messages.{i}")
        role = message.get("role")
        if role not in _ROLES:
            raise _invalid(f"messages[{i}].role must be one of {sorted(_ROLES)}", f"messages.{i}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _invalid(f"messages[{i}].content must be a string or an array of parts", f"messages.{i}.content")
        # Only what the user wrote says what the request is about: system prompts are the operator's
        # standing instructions, assistant and tool turns are the model's own output.
        if role == "user":
            text = content_text(content)
            if text:
                user_turns.append(text)
    return _candidates(user_turns, context_turns)


def _prompt_routing_texts(prompt: Any) -> tuple[str, ...]:
    if prompt is None:
        raise _invalid("'prompt' is required", "prompt")
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        texts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        texts = []  # token ids: nothing to read, the default route answers
    else:
        raise _invalid("'prompt' must be a string, an array of strings or an array of token ids", "prompt")
    return _candidates([t.strip() for t in texts if t.strip()], 1)


def _candidates(turns: list[str], context_turns: int) -> tuple[str, ...]:
    if not turns:
        return ()
    last = turns[-1]
    context = "\n".join(turns[-context_turns:])
    return (last,) if context == last else (last, context)


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of an array of parts."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str)).strip()
    return ""


def _invalid(message: str, param: str) -> OpenAIError:
    return OpenAIError(400, message, code="invalid_parameter", param=param)
