"""One vLLM engine in this process, answering OpenAI requests with vLLM's own serving code.

No Ray here: the LLM deployment is a thin shell around ``VLLMEngine``. vLLM 0.29's ``AsyncLLM``
always runs its engine core (scheduler, KV cache and, on one GPU, the model) in one child process,
spawned inside a Ray actor, which inherits the caller's environment: one engine per replica, so
per-process settings such as kvcached's IPC name apply to exactly one engine.

Every call is an async generator whose first item is an ``EngineReply``: either a whole JSON body
(a non-streaming answer, or an error with its status) or ``body=None``, after which the
server-sent-event strings of a stream follow, ending with ``data: [DONE]``. The ingress can
therefore set the HTTP status before it commits to a stream.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

from serve_app.errors import error_body

logger = logging.getLogger("serve_app.vllm_engine")

Endpoint = Literal["chat", "completion"]


@dataclasses.dataclass(frozen=True)
class EngineReply:
    status: int
    body: dict[str, Any] | None  # None: the SSE strings of a stream follow


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
        self._engine = None
        self._chat = None
        self._completion = None

    async def start(self) -> None:
        from argparse import Namespace

        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import FrontendArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = AsyncEngineArgs(
            model=self.model, served_model_name=[self.served_model_name], **self._engine_kwargs
        )
        self._engine = AsyncLLM.from_engine_args(engine_args)
        # The same flat namespace `vllm serve` builds from its command line.
        args = Namespace(**(vars(FrontendArgs(**self._frontend_kwargs)) | vars(engine_args)))
        state = State()
        await init_app_state(self._engine, state, args, supported_tasks=await self._engine.get_supported_tasks())
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        logger.info("vLLM engine ready: %s serving %s", self.served_model_name, self.model)

    @property
    def max_model_len(self) -> int:
        return self._engine.model_config.max_model_len

    async def check_health(self) -> None:
        await self._engine.check_health()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    async def generate(self, endpoint: Endpoint, body: dict[str, Any]) -> AsyncIterator[EngineReply | str]:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        serving = self._chat if endpoint == "chat" else self._completion
        protocol = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
        try:
            request = protocol.model_validate(body)
        except ValidationError as exc:
            yield EngineReply(400, error_body(400, _validation_message(exc), code="invalid_parameter",
                                              param=_validation_param(exc)))
            return
        try:
            if endpoint == "chat":
                result = await serving.create_chat_completion(request, raw_request=None)
            else:
                result = await serving.create_completion(request, raw_request=None)
        except Exception as exc:  # vLLM raises ValueError & co. for requests it cannot serve
            result = serving.create_error_response(exc)
        if isinstance(result, ErrorResponse):
            yield EngineReply(result.error.code, _error_body(result))
        elif isinstance(result, AsyncIterator):
            yield EngineReply(200, None)
            async for chunk in result:
                yield chunk
        else:
            yield EngineReply(200, result.model_dump(exclude_unset=False))


def _error_body(err: Any) -> dict[str, Any]:
    # vLLM puts the HTTP status in `code` and a class name in `type`; OpenAI clients expect strings.
    info = err.error
    code = {400: "invalid_request", 404: "not_found", 413: "context_length_exceeded"}.get(info.code)
    return error_body(info.code, info.message, code=code, param=info.param)


def _validation_message(exc: Any) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"Invalid request: {where}: {first['msg']}" if where else f"Invalid request: {first['msg']}"


def _validation_param(exc: Any) -> str | None:
    loc = exc.errors()[0]["loc"]
    return ".".join(str(p) for p in loc) or None
