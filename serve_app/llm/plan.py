"""One LLM as the ingress and its replica see it: where it runs, what it loads, what it answers as.

Made from the configuration by ``serve_app/config/graph.py``; this package never reads the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLMPlan:
    """One LLM: what its deployment asks of Ray, what its engine starts with, and what it answers as.

    An external LLM (``endpoint`` set) has no deployment: the ingress calls its endpoint over HTTP.
    """

    llm: str  # the name of its entry in the config's llms
    deployment: str | None  # None: external
    configured_model: str  # what the config asks for
    model: str  # what the replica loads: an id, a path or embedded:NAME (the CPU fallback's model)
    served_model: str  # the name it answers as (external: the model id sent to the endpoint)
    engine_args: dict[str, Any]
    env: dict[str, str]  # set in the replica before vLLM is imported
    ray_actor_options: dict[str, Any]
    tools: bool = False  # answers requests with tools (vLLM: a tool parser is configured)
    endpoint: str | None = None
    api_key_env: str | None = None

    @property
    def cpu_fallback(self) -> bool:
        return self.model != self.configured_model

    @property
    def external(self) -> bool:
        return self.endpoint is not None
