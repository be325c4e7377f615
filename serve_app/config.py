"""The application's typed configuration: the ``args`` of ``serve_config.yaml``.

Every model forbids unknown keys, so a typo fails the deploy with a message naming the key
instead of being silently ignored. Serve's own deployment options (replicas, autoscaling,
``max_ongoing_requests``) stay in the ``deployments:`` section of the Serve config; resources
live here because they depend on the accelerator the cluster turns out to have.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.embedded import EMBEDDED_PREFIX, MINILM, SMOLLM2

_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMConfig(StrictModel):
    """One vLLM deployment (``llm-<name>``). Several routes may share it."""

    name: str = Field(pattern=_NAME)
    model: str = Field(min_length=1, description="Weights served on GPU: a Hugging Face id or a local path.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM AsyncEngineArgs/FrontendArgs, e.g. max_model_len."
    )
    num_gpus: float = Field(0.3, gt=0, description="GPU share of one replica (fractions share a GPU).")
    num_cpus: float = Field(1.0, ge=0)

    @field_validator("engine_args")
    @classmethod
    def _engine_args_owned_here(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "served_model_name"} & value.keys()
        if owned:
            raise ValueError(f"engine_args may not set {sorted(owned)}: use the llm's 'model' field")
        return value


class RouteConfig(StrictModel):
    """A category of requests, declared by example queries, answered by one LLM."""

    name: str = Field(pattern=_NAME)
    llm: str = Field(description="Name of the entry in 'llms' that answers this route.")
    description: str = ""
    examples: list[str] = Field(min_length=1)
    threshold: float | None = Field(None, ge=-1, le=1, description="Overrides classifier.threshold.")

    @field_validator("examples")
    @classmethod
    def _no_blank_examples(cls, value: list[str]) -> list[str]:
        if any(not e.strip() for e in value):
            raise ValueError("examples may not be blank")
        return value


class ClassifierConfig(StrictModel):
    model: str = Field(f"{EMBEDDED_PREFIX}{MINILM}", description="sentence-transformers model: path, id or embedded.")
    threshold: float = Field(0.2, ge=-1, le=1, description="Below this score a request goes to the default route.")
    top_k: int = Field(3, ge=1, description="A route's score is the mean similarity of its k nearest examples.")
    context_turns: int = Field(3, ge=1, description="User turns read when the last one alone is not confident.")
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    num_gpus: float = Field(0.1, ge=0, description="GPU share on the GPU profile.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs on the GPU profile.")


class CPUFallbackConfig(StrictModel):
    """What every LLM deployment serves when the cluster has no GPU (and on accelerator: cpu)."""

    model: str = f"{EMBEDDED_PREFIX}{SMOLLM2}"
    engine_args: dict[str, Any] = Field(default_factory=lambda: {"dtype": "float32", "max_model_len": 2048})
    kv_cache_space_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE: allocated up front per engine.")
    llm_num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per LLM replica.")
    small_num_cpus: float = Field(0.05, ge=0, description="Ray CPUs per ingress, classifier and stats replica.")


class RouterConfig(StrictModel):
    """Top level of the application ``args``."""

    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="auto: GPU if the Ray cluster has GPUs when the app is built, else the CPU fallback."
    )
    default_route: str = "general"
    request_timeout_s: float = Field(600, gt=0, description="Longest wait for an LLM's first reply.")
    classifier: ClassifierConfig = ClassifierConfig()
    llms: list[LLMConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(min_length=1)
    cpu_fallback: CPUFallbackConfig = CPUFallbackConfig()

    @model_validator(mode="after")
    def _names_resolve(self) -> RouterConfig:
        _unique("llms", [llm.name for llm in self.llms])
        _unique("routes", [route.name for route in self.routes])
        route_names = {r.name for r in self.routes}
        if "auto" in route_names:
            raise ValueError("'auto' is reserved for classified requests and cannot name a route")
        llm_names = {llm.name for llm in self.llms}
        for route in self.routes:
            if route.llm not in llm_names:
                raise ValueError(f"route {route.name!r} names llm {route.llm!r}, which is not in llms {sorted(llm_names)}")
        if self.default_route not in route_names:
            raise ValueError(f"default_route {self.default_route!r} is not a route; routes are {sorted(route_names)}")
        unused = llm_names - {r.llm for r in self.routes}
        if unused:
            raise ValueError(f"llms {sorted(unused)} serve no route; remove them or point a route at them")
        return self

    def llm(self, name: str) -> LLMConfig:
        return next(llm for llm in self.llms if llm.name == name)

    def route(self, name: str) -> RouteConfig:
        return next(r for r in self.routes if r.name == name)


def _unique(what: str, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} has two entries named {name!r}")
        seen.add(name)


def deployment_name(llm_name: str) -> str:
    return f"llm-{llm_name}"


def describe_error(exc: Exception) -> str:
    """One readable line per pydantic error: ``routes.0.exampels: Extra inputs are not permitted``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = re.sub(r"^Value error, ", "", err["msg"])
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)
