"""Request parsing: the part of an OpenAI request that routing reads.

Declared as pydantic models that accept any other field: the ingress validates what it must read to
route (``model``, ``stream``, the messages' roles and text, the prompt) and rejects a request it cannot
route before any model is asked. Everything else (sampling parameters, tools, response_format, ...) is
the serving model's to validate: vLLM's own protocol models do it in the LLM replica.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from serve_app.api.errors import OpenAIError

Endpoint = Literal["chat", "completion", "responses"]
AUTO_MODEL = "auto"
SYSTEM_ROLES = ("system", "developer")


class _Routed(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    stream: StrictBool | None = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[Any] | None = None


class _WithTools(_Routed):
    tools: list[Any] | None = None
    tool_choice: Any = None


class _ChatRequest(_WithTools):
    messages: list[ChatMessage] = Field(min_length=1)


class _ResponsesRequest(_WithTools):
    input: StrictStr | list[Any] = Field(min_length=1)


class _CompletionRequest(_Routed):
    prompt: StrictStr | list[StrictStr] | list[int] = Field(min_length=1)


@dataclass(frozen=True)
class ParsedRequest:
    body: dict[str, Any]
    model: str | None  # None or "auto": classify
    stream: bool
    # What routing reads: the user's last turns (at most context_turns), oldest first.
    turns: tuple[str, ...]
    tools: bool = False  # asks the model to call tools (tool_choice other than "none")
    # The operator's standing instructions (system and developer messages, Responses instructions): read only
    # when the user's turns leave the request below every threshold.
    system: str = ""


MAX_JSON_DEPTH = 64  # far deeper than any OpenAI request (tool schemas included); Ray cannot pickle ~500 levels


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise OpenAIError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, an integer of 4300+ digits
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    _check_values(body)
    return body


def _check_values(body: dict[str, Any]) -> None:
    """Refuse what JSON allows but nothing downstream can carry: deep nesting and lone UTF-16 surrogates.

    A surrogate ("\\ud800" alone) is valid JSON but not text: the tokenizer of a batched classifier call, or
    vLLM's response encoder, would fail on it, for every request of the batch in the classifier's case.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise OpenAIError(400, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")
        if isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise OpenAIError(400, "The request body holds a lone UTF-16 surrogate, which is not text.",
                                  code="invalid_json") from None


def parse_request(endpoint: Endpoint, body: dict[str, Any], context_turns: int = 3) -> ParsedRequest:
    try:
        if endpoint == "completion":
            completion = _CompletionRequest.model_validate(body)
            prompt = completion.prompt
            # Token ids say nothing readable: the default route answers them.
            prompts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)]
            texts = [p.strip() for p in prompts if p.strip()][-1:]
            return ParsedRequest(body, completion.model or None, bool(completion.stream), tuple(texts))
        # What the user wrote says what the request is about: assistant and tool turns are output, tool schemas
        # describe tools, and system prompts are the operator's standing orders, read only as a last resort.
        if endpoint == "chat":
            routed = _ChatRequest.model_validate(body)
            turns = [content_text(m.content) for m in routed.messages if m.role == "user"]
            system = [content_text(m.content) for m in routed.messages if m.role in SYSTEM_ROLES]
        else:
            routed = _ResponsesRequest.model_validate(body)
            if body.get("previous_response_id") is not None:
                # Each turn may be answered by another model, and no engine keeps responses.
                raise OpenAIError(400, "previous_response_id is not supported: the router stores no responses (each "
                                  "turn may go to another model). Send the whole conversation in input.",
                                  code="unsupported_parameter", param="previous_response_id")
            turns = ([routed.input.strip()] if isinstance(routed.input, str)
                     else [content_text(item.get("content")) for item in routed.input
                           if isinstance(item, dict) and item.get("role") == "user"])
            instructions = body.get("instructions")
            system = [instructions.strip() if isinstance(instructions, str) else ""]
            if not isinstance(routed.input, str):
                system += [content_text(item.get("content")) for item in routed.input
                           if isinstance(item, dict) and item.get("role") in SYSTEM_ROLES]
    except ValidationError as exc:
        raise OpenAIError.invalid(exc) from None
    tools = bool(routed.tools) and routed.tool_choice != "none"
    return ParsedRequest(body, routed.model or None, bool(routed.stream),
                         tuple([t for t in turns if t][-context_turns:]), tools, "\n".join(s for s in system if s))


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of an array of parts (chat or Responses)."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")]
        return "\n".join(p for p in parts if isinstance(p, str)).strip()
    return ""
