"""What each deployment asks of the Ray cluster, and what each engine is started with.

Pure: the builder turns this plan into Serve deployments, and tests read the same plan to prove
that the GPU options (fractions, environment) are what reaches Ray without needing a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.config import RouterConfig, deployment_name
from serve_app.embedded import SMOLLM2, is_embedded
from serve_app.routing import RouteTarget

logger = logging.getLogger("serve_app.placement")

Accelerator = Literal["gpu", "cpu"]

INGRESS = "Ingress"
CLASSIFIER = "Classifier"
STATS = "StatsRecorder"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an LLM replica needs to start its engine."""

    llm: str
    model: str  # id, path or embedded:NAME; resolved to files inside the replica
    served_model_name: str
    engine_args: dict[str, Any]
    env: dict[str, str]  # set in the replica before vLLM is imported


@dataclass(frozen=True)
class DeploymentPlan:
    name: str
    ray_actor_options: dict[str, Any]
    engine: EngineSpec | None = None


@dataclass(frozen=True)
class Plan:
    accelerator: Accelerator
    deployments: dict[str, DeploymentPlan] = field(default_factory=dict)
    targets: list[RouteTarget] = field(default_factory=list)


def served_model_name(model: str) -> str:
    return model.removeprefix("embedded:") if is_embedded(model) else model


def cpu_engine_env(kv_cache_space_gib: int, cores: int | None = None) -> dict[str, str]:
    cores = cores or os.cpu_count() or 1
    return {
        # One engine per process, in the replica itself (see serve_app/vllm_engine.py).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_space_gib),
        # vLLM leaves one core idle by default: on a small box that halves throughput.
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        # vLLM 0.29's AOT compile cache fails to load on CPU and recompiles every start (about 115 s);
        # the plain inductor cache reloads (about 50 s).
        "VLLM_USE_AOT_COMPILE": "0",
    }


def gpu_engine_env() -> dict[str, str]:
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def plan(config: RouterConfig, accelerator: Accelerator) -> Plan:
    result = Plan(accelerator)
    cpu = config.cpu_fallback
    small = ({"num_cpus": cpu.small_num_cpus} if accelerator == "cpu"
             else {"num_cpus": config.classifier.num_cpus, "num_gpus": config.classifier.num_gpus})
    result.deployments[INGRESS] = DeploymentPlan(INGRESS, {"num_cpus": cpu.small_num_cpus})
    result.deployments[STATS] = DeploymentPlan(STATS, {"num_cpus": cpu.small_num_cpus})
    result.deployments[CLASSIFIER] = DeploymentPlan(CLASSIFIER, small)

    for llm in config.llms:
        if accelerator == "cpu":
            model, engine_args = cpu.model, dict(cpu.engine_args)
            actor = {"num_cpus": cpu.llm_num_cpus}
            env = cpu_engine_env(cpu.kv_cache_space_gib)
        else:
            model, engine_args = llm.model, dict(llm.engine_args)
            actor = {"num_cpus": llm.num_cpus, "num_gpus": llm.num_gpus}
            env = gpu_engine_env()
        name = deployment_name(llm.name)
        spec = EngineSpec(llm.name, model, served_model_name(model), engine_args, env)
        result.deployments[name] = DeploymentPlan(name, actor, spec)

    for route in config.routes:
        spec = result.deployments[deployment_name(route.llm)].engine
        assert spec is not None
        result.targets.append(RouteTarget(
            route=route.name, llm=route.llm, deployment=deployment_name(route.llm),
            configured_model=config.llm(route.llm).model, served_model=spec.served_model_name,
            fallback=spec.model != config.llm(route.llm).model,
        ))
    return result


def resolve_accelerator(requested: str, cluster_gpus: float) -> Accelerator:
    """``auto`` means GPU when the cluster has GPUs now; set ``gpu`` for clusters that scale GPU nodes from zero."""
    if requested == "gpu":
        return "gpu"
    if requested == "cpu":
        return "cpu"
    if cluster_gpus > 0:
        return "gpu"
    logger.warning(
        "No GPU in the Ray cluster: every LLM deployment serves the embedded CPU default %s with vLLM's CPU "
        "build. Set accelerator: gpu to require GPUs.", SMOLLM2,
    )
    return "cpu"
