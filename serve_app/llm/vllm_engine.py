"""One vLLM engine in this process, answering OpenAI requests with vLLM's own serving code.

No Ray here: the LLM deployment is a thin shell around ``VLLMEngine``. vLLM 0.29's ``AsyncLLM``
always runs its engine core (scheduler, KV cache and, on one GPU, the model) in one child process,
spawned inside a Ray actor, which inherits the caller's environment: one engine per replica, so
per-process settings such as kvcached's IPC name apply to exactly one engine.

It speaks the ingress's contract (``serve_app/llm/protocol.py``): ``complete`` returns a whole JSON
body, ``stream`` yields server-sent-event strings, and a request vLLM refuses raises ``OpenAIError``
with vLLM's status before anything is sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serve_app.api.errors import OpenAIError
from serve_app.llm.protocol import LLMRequest

logger = logging.getLogger("serve_app.llm.vllm_engine")

CHAT_TEMPLATES = Path(__file__).with_name("chat_templates")  # the templates the router ships


def chat_template_path(template: str) -> str:
    """A shipped template's file (``chatml_tools``), or what was given: a path, or a template itself."""
    shipped = CHAT_TEMPLATES / f"{template}.jinja"
    return str(shipped) if shipped.is_file() else template


def split_engine_args(engine_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split user-given vLLM arguments into (engine, frontend) keyword sets; reject unknown keys by name."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    engine_fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    frontend_fields = {f.name for f in dataclasses.fields(FrontendArgs)}
    engine, frontend = {}, {}
    for key, value in engine_args.items():
        if key in engine_fields:
            engine[key] = value
        elif key in frontend_fields:
            frontend[key] = value
        else:
            raise ValueError(f"Unknown vLLM engine argument {key!r} (not a field of AsyncEngineArgs or FrontendArgs)")
    return engine, frontend


class VLLMEngine:
    def __init__(self, model: str, served_model_name: str, engine_args: dict[str, Any]) -> None:
        self.model = model
        self.served_model_name = served_model_name
        self._engine_kwargs, self._frontend_kwargs = split_engine_args(engine_args)
        if self._frontend_kwargs.get("chat_template"):
            self._frontend_kwargs["chat_template"] = chat_template_path(self._frontend_kwargs["chat_template"])
        self._engine = None
        self._chat = None
        self._completion = None
        self._responses = None

    async def start(self) -> None:
        from argparse import Namespace

        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        engine_args = AsyncEngineArgs(
            model=self.model, served_model_name=[self.served_model_name], **self._engine_kwargs
        )
        # vLLM's engine metrics (KV-cache use, running/waiting requests, time to first token) through Ray's
        # metrics system, beside Serve's and the router's: what Ray Serve LLM does too.
        self._engine = AsyncLLM.from_engine_args(engine_args, stat_loggers=[RayPrometheusStatLogger])
        # The same flat namespace `vllm serve` builds from its command line.
        args = Namespace(**(vars(FrontendArgs(**self._frontend_kwargs)) | vars(engine_args)))
        state = State()
        await init_app_state(self._engine, state, args, supported_tasks=await self._engine.get_supported_tasks())
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        self._responses = getattr(state, "openai_serving_responses", None)
        logger.info("vLLM engine ready: %s serving %s", self.served_model_name, self.model)

    async def check_health(self) -> None:
        await self._engine.check_health()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    async def complete(self, request: LLMRequest) -> dict[str, Any]:
        result = await self._serve(request)
        if isinstance(result, AsyncIterator):  # only a request that asked to stream gets a generator
            raise OpenAIError(400, "This call answers whole; the request asked to stream.", param="stream")
        if request.endpoint == "responses":  # as vLLM's own /v1/responses route writes it
            return result.model_dump(mode="json", by_alias=True)
        return result.model_dump(exclude_unset=False)

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        result = await self._serve(request)
        if not isinstance(result, AsyncIterator):
            raise OpenAIError(400, "This call streams; the request did not ask to stream.", param="stream")
        if request.endpoint == "responses":
            # Chat and completion streams come as SSE strings; Responses streams as typed events.
            async for event in result:
                yield f"event: {event.type}\ndata: {event.model_dump_json(by_alias=True)}\n\n"
            return
        async for chunk in result:
            yield chunk

    async def _serve(self, request: LLMRequest) -> Any:
        """vLLM's own serving code: a response model, or an async generator (SSE strings or events) for a stream."""
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        serving, protocol, create = {
            "chat": (self._chat, ChatCompletionRequest, "create_chat_completion"),
            "completion": (self._completion, CompletionRequest, "create_completion"),
            "responses": (self._responses, ResponsesRequest, "create_responses"),
        }[request.endpoint]
        if serving is None:
            raise OpenAIError(404, f"{self.served_model_name} does not serve the {request.endpoint} API.",
                              code="not_found")
        try:
            parsed = protocol.model_validate(request.body)
        except ValidationError as exc:
            raise OpenAIError.invalid(exc) from None
        except Exception as exc:  # vLLM's validators also raise their own types (VLLMValidationError, and worse)
            raise OpenAIError(400, f"Invalid request: {exc}", code="invalid_parameter",
                              param=getattr(exc, "parameter", None)) from None
        try:
            result = await getattr(serving, create)(parsed, raw_request=None)
        except Exception as exc:  # vLLM raises ValueError & co. for requests it cannot serve
            result = serving.create_error_response(exc)
        if isinstance(result, ErrorResponse):
            raise _openai_error(result)
        return result


def _openai_error(err: Any) -> OpenAIError:
    # vLLM puts the HTTP status in `code` and a class name in `type`; OpenAI clients expect strings.
    info = err.error
    code = {400: "invalid_request", 404: "not_found", 413: "context_length_exceeded"}.get(info.code)
    return OpenAIError(info.code, info.message, code=code, param=info.param)
