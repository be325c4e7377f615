"""LLM deployment: one vLLM engine per replica, answering OpenAI requests with vLLM's serving code."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.api.errors import OpenAIError
from serve_app.embedded import resolve_llm
from serve_app.llm import kvcached
from serve_app.llm.plan import LLMPlan
from serve_app.llm.protocol import LLMRequest, coalesce_ready
from serve_app.llm.vllm_engine import VLLMEngine

logger = logging.getLogger("ray.serve")


# An engine start loads weights and compiles: minutes, longer while kvcached waits for GPU memory. Serve puts
# no time limit on __init__ and health-checks a replica only once it is ready, so these apply to a running
# engine, whose check is a flag read: 60 s only trips on a wedged replica. Queue limits and autoscaling are
# the Serve config's (serve_config.yaml), where Serve changes them in place.
@serve.deployment(health_check_period_s=10, health_check_timeout_s=60, graceful_shutdown_timeout_s=30)
class VLLMServer:
    async def __init__(self, llm: LLMPlan) -> None:
        context = serve.get_replica_context()
        env = kvcached.replica_env(llm.env, context.deployment, context.replica_id.unique_id)
        if kvcached.enabled(env):
            # Fail now, saying what to install or turn off, rather than deep inside vLLM minutes later.
            kvcached.require_runtime(await asyncio.to_thread(kvcached.probe_runtime))
            logger.info("kvcached on for llm %r: KV cache segment %s", llm.llm, env[kvcached.IPC_NAME])
        # Before vLLM is imported: per-process engine settings must be in place when its modules load, and the
        # engine-core process vLLM spawns inherits them.
        os.environ.update(env)
        model, served = await asyncio.to_thread(resolve_llm, llm.model)
        logger.info("Starting vLLM for llm %r: %s (served as %s)", llm.llm, model, served)
        self.engine = VLLMEngine(model, served, llm.engine_args)
        await self.engine.start()

    async def generate(self, request: LLMRequest) -> AsyncIterator[dict[str, Any] | str | OpenAIError]:
        """The protocol's one call (serve_app/llm/protocol.py): a whole answer is the only item of its stream."""
        try:
            if not request.stream:
                yield await self.engine.complete(request)
                return
            # Events that pile up while many streams keep this replica busy cross the handle together.
            async for events in coalesce_ready(self.engine.stream(request)):
                yield events
        except OpenAIError as exc:
            if exc.status >= 500:
                raise
            # The client's mistake crosses as a value: raised, Serve would log it as a failed request (an ERROR
            # with a traceback), and operators page on those.
            logger.info("Refused a request: %d %s", exc.status, exc.message)
            yield exc

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
