"""What each deployment asks of the Ray cluster, and what each LLM engine is started with.

Pure: the builder turns this plan into Serve deployments, tests read the same plan to prove that the
GPU options (fractions, environment) are what reaches Ray without needing a GPU, and
``python -m serve_app.tools.placement`` prints it for operators.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.config.schema import LLMEntry, RouterConfig, ToolCalling, deployment_name
from serve_app.embedded import SMOLLM2, is_embedded
from serve_app.llm import kvcached
from serve_app.llm.plan import LLMPlan

logger = logging.getLogger("serve_app.tools.placement")

Accelerator = Literal["gpu", "cpu"]
Placement = Literal["ingress", "deployment"]

INGRESS = "Ingress"
CLASSIFIER = "Classifier"
STATS = "StatsAggregator"
GIB = 1 << 30
# Every Ray head node has this resource. On a cluster of node types the ingress and stats replicas ask for a
# sliver of it: they stay on the CPU head beside Serve's proxy and controller, so losing an LLM node never
# takes the ingress (and every request in it) down with it.
HEAD_RESOURCE = "node:__internal_head__"

# Ray Serve runs a replica's user code, and a handle's request router, on event loops of their own threads
# by default: every call to the classifier crossed four threads for a few milliseconds of model. The router's
# own small deployments do no blocking work on their loops (the encoder runs in a worker thread), so they
# run both on the replica's main loop, as Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED mode does. Set either
# variable in the environment of `serve run` to override.
SERVE_FAST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


@dataclass(frozen=True)
class GraphPlan:
    # The ingress, stats and (with classifier_placement "deployment") classifier deployments.
    ray_actor_options: dict[str, dict[str, Any]]
    llms: dict[str, LLMPlan] = field(default_factory=dict)  # by llm name
    classifier_placement: Placement = "deployment"

    @property
    def deployed_llms(self) -> dict[str, LLMPlan]:
        """The LLMs served in the cluster (external ones have no deployment)."""
        return {name: llm for name, llm in self.llms.items() if not llm.external}


def served_model_name(model: str) -> str:
    return model.removeprefix("embedded:") if is_embedded(model) else model


def tool_engine_args(tool_calling: ToolCalling | None) -> dict[str, Any]:
    """The vLLM frontend arguments that let an engine answer requests with tools."""
    if tool_calling is None:
        return {}
    args: dict[str, Any] = {"enable_auto_tool_choice": True, "tool_call_parser": tool_calling.parser}
    if tool_calling.chat_template:
        args["chat_template"] = tool_calling.chat_template  # a shipped name is found by the replica
    return args


def external_plan(llm: LLMEntry) -> LLMPlan:
    # The endpoint decides what it supports: a request with tools is sent on, and its answer passed back.
    return LLMPlan(llm.name, None, llm.model, llm.model, llm.model, {}, {}, {}, tools=True,
                   endpoint=llm.endpoint.rstrip("/"), api_key_env=llm.api_key_env)


def cpu_engine_env(kv_cache_space_gib: int, cores: int | None = None) -> dict[str, str]:
    cores = cores or os.cpu_count() or 1
    return {
        # One engine per process, in the replica itself (see serve_app/llm/vllm_engine.py).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_space_gib),
        # vLLM leaves one core idle by default: on a small box that halves throughput.
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        # vLLM 0.29's AOT compile cache fails to load on CPU and recompiles every start (about 115 s);
        # the plain inductor cache reloads (about 50 s).
        "VLLM_USE_AOT_COMPILE": "0",
    }


def gpu_engine_env(config: RouterConfig) -> dict[str, str]:
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if config.kvcached.enabled:
        k = config.kvcached
        env |= kvcached.engine_env(k.gpu_utilization, k.contiguous_layout, config.classifier.num_gpus, k.env)
    return env


def gpu_engine_args(llm: LLMEntry, use_kvcached: bool) -> dict[str, Any]:
    args = dict(llm.engine_args)
    if llm.kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(llm.kv_cache_gib * GIB)
    if use_kvcached:
        # kvcached hands a finished request's pages back to the shared pool; vLLM's prefix cache would keep
        # them, so an idle engine would sit on memory its neighbours need (kvcached's own examples turn it off).
        args.setdefault("enable_prefix_caching", False)
    else:
        # Without kvcached each engine reserves gpu_memory_utilization of the whole GPU up front (vLLM's
        # default 0.9), so the second engine on a shared GPU could not start: reserve the Ray share instead.
        # (Under kvcached this is only a logical cap, not a reservation, and vLLM's default is right.)
        args.setdefault("gpu_memory_utilization", llm.num_gpus)
    return args


def plan(config: RouterConfig, accelerator: Accelerator, gpu_stand_in: str | None = None) -> GraphPlan:
    """``gpu_stand_in``: on the CPU profile, the resource each GPU-profile share is asked of instead
    (``resolve_stand_in``), so a cluster without GPUs places replicas as a GPU cluster would: the LLMs and
    the classifier on the GPU node type, the ingress and stats on the head."""
    if accelerator == "cpu" and config.kvcached.enabled:
        logger.info("kvcached is GPU-only: ignored on the CPU fallback (vLLM's CPU build reserves its KV cache).")
    cpu = config.cpu_fallback
    fast_path = {"runtime_env": {"env_vars": serve_fast_path_env()}}
    small = {"num_cpus": cpu.small_num_cpus} | fast_path
    on_head = small if accelerator == "cpu" and not gpu_stand_in else small | {"resources": {HEAD_RESOURCE: 0.001}}

    def on_cpu(num_cpus: float, gpu_share: float) -> dict[str, Any]:
        return {"num_cpus": num_cpus} | ({"resources": {gpu_stand_in: gpu_share}} if gpu_stand_in else {})

    placement = classifier_placement(config, accelerator, gpu_stand_in)
    actors = {INGRESS: on_head, STATS: on_head}
    if placement == "deployment":
        actors[CLASSIFIER] = (
            on_cpu(cpu.small_num_cpus, config.classifier.num_gpus) | fast_path if accelerator == "cpu"
            else {"num_cpus": config.classifier.num_cpus, "num_gpus": config.classifier.num_gpus} | fast_path)
    result = GraphPlan(actors, classifier_placement=placement)
    for llm in config.llms:
        if llm.external:
            result.llms[llm.name] = external_plan(llm)
            continue
        if accelerator == "cpu":
            model, engine_args, tools = cpu.model, dict(cpu.engine_args), cpu.tool_calling
            actor = on_cpu(cpu.llm_num_cpus, llm.num_gpus)
            env = cpu_engine_env(cpu.kv_cache_space_gib)
        else:
            model, engine_args, tools = llm.model, gpu_engine_args(llm, config.kvcached.enabled), llm.tool_calling
            actor = {"num_cpus": llm.num_cpus, "num_gpus": llm.num_gpus}
            env = gpu_engine_env(config)
        result.llms[llm.name] = LLMPlan(llm.name, deployment_name(llm.name), llm.model, model,
                                        served_model_name(model), engine_args | tool_engine_args(tools), env, actor,
                                        tools=tools is not None)
    return result


def classifier_placement(config: RouterConfig, accelerator: Accelerator, gpu_stand_in: str | None) -> Placement:
    """Where the encoder runs. ``auto``: its own deployment where it gets a GPU share (batching on the GPU pays
    for the hop from the ingress; so does the stand-in, which places it as a GPU would), else in the ingress."""
    if config.classifier.placement != "auto":
        return config.classifier.placement
    return "deployment" if accelerator == "gpu" or gpu_stand_in else "ingress"


def serve_fast_path_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """SERVE_FAST_PATH_ENV, where ``environ`` (the builder's, which `serve run`'s shell set) does not say otherwise."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name, value) for name, value in SERVE_FAST_PATH_ENV.items()}


def resolve_stand_in(config: RouterConfig, accelerator: Accelerator, cluster: dict[str, float]) -> str | None:
    """The GPU stand-in resource to place by: configured, on the CPU profile, and present in ``cluster``."""
    name = config.cpu_fallback.gpu_stand_in
    if accelerator != "cpu" or name is None:
        return None
    if cluster.get(name, 0) <= 0:
        logger.info("No %r resource in the Ray cluster: the CPU profile places replicas by CPUs alone.", name)
        return None
    logger.info("Placing by the GPU stand-in %r: each replica asks for its GPU-profile share of it.", name)
    return name


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
