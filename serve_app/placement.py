"""What each deployment asks of the Ray cluster, and what each engine is started with.

Pure: the builder turns this plan into Serve deployments, and tests read the same plan to prove
that the GPU options (fractions, environment) are what reaches Ray without needing a GPU.
``python -m serve_app.placement serve_config.yaml [--accelerator gpu|cpu]`` prints it for operators.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app import kvcached
from serve_app.config import LLMConfig, RouterConfig, deployment_name
from serve_app.embedded import SMOLLM2, is_embedded
from serve_app.routing import LLMTarget

logger = logging.getLogger("serve_app.placement")

Accelerator = Literal["gpu", "cpu"]

INGRESS = "Ingress"
CLASSIFIER = "Classifier"
STATS = "StatsRecorder"
GIB = 1 << 30


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
    llms: list[LLMTarget] = field(default_factory=list)  # what the ingress routes to


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


def gpu_engine_env(config: RouterConfig) -> dict[str, str]:
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if config.kvcached.enabled:
        env |= kvcached.engine_env(config.kvcached, config.classifier.num_gpus)
    return env


def gpu_engine_args(llm: LLMConfig, use_kvcached: bool) -> dict[str, Any]:
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


def plan(config: RouterConfig, accelerator: Accelerator) -> Plan:
    result = Plan(accelerator)
    if accelerator == "cpu" and config.kvcached.enabled:
        logger.info("kvcached is GPU-only: ignored on the CPU fallback (vLLM's CPU build reserves its KV cache).")
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
            model, engine_args = llm.model, gpu_engine_args(llm, config.kvcached.enabled)
            actor = {"num_cpus": llm.num_cpus, "num_gpus": llm.num_gpus}
            env = gpu_engine_env(config)
        name = deployment_name(llm.name)
        spec = EngineSpec(llm.name, model, served_model_name(model), engine_args, env)
        result.deployments[name] = DeploymentPlan(name, actor, spec)
        result.llms.append(LLMTarget(llm.name, name, llm.model, spec.served_model_name, fallback=model != llm.model))

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


# ---- what an operator sees: python -m serve_app.placement serve_config.yaml [--accelerator gpu|cpu] -------------

_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as it will run: Ray resources, Serve's replica options from the file, the environment."""

    name: str
    ray_actor_options: dict[str, Any]
    options: dict[str, Any]  # its entry in the application's deployments section, less the name
    env: dict[str, str]  # secrets masked
    per_replica_env: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)

    @property
    def autoscaling(self) -> Any:
        """Serve's AutoscalingConfig with its defaults filled in, or None for a fixed number of replicas."""
        from ray.serve.config import AutoscalingConfig

        given = self.options.get("autoscaling_config")
        return None if given is None else AutoscalingConfig(**given)

    @property
    def replicas(self) -> tuple[int, int]:
        """(fewest, most) replicas: the autoscaling bounds, or num_replicas twice."""
        if (a := self.autoscaling) is not None:
            return a.min_replicas, a.max_replicas
        n = self.options.get("num_replicas", 1)
        return (n, n) if isinstance(n, int) else (1, 1)


def mask_env(env: dict[str, str]) -> dict[str, str]:
    return {k: "****" if any(w in k.upper() for w in _SECRET_WORDS) else v for k, v in env.items()}


def describe(app: dict[str, Any], accelerator: Accelerator) -> list[DeploymentView]:
    """The deployments of one application of a Serve config file (a dict), as they will run on ``accelerator``."""
    placement = plan(RouterConfig.model_validate(app.get("args") or {}), accelerator)
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments") or []}
    app_env = {k: str(v) for k, v in ((app.get("runtime_env") or {}).get("env_vars") or {}).items()}
    views = []
    for name, d in placement.deployments.items():
        engine, env, per_replica = d.engine, dict(app_env), {}
        if engine is not None:
            env |= engine.env
            if kvcached.enabled(engine.env):
                per_replica[kvcached.IPC_NAME] = kvcached.ipc_name(name, "x" * 8)[:-8] + "<replica id>"
        views.append(DeploymentView(
            name, d.ray_actor_options, options.get(name, {}), mask_env(env), per_replica,
            engine.served_model_name if engine else None, engine.engine_args if engine else {}))
    return views


def _scaling_text(view: DeploymentView) -> str:
    a = view.autoscaling
    if a is None:
        text = f"{view.options.get('num_replicas', 1)} (fixed)"
    else:
        text = (f"autoscaling {a.min_replicas}..{a.max_replicas}, target {a.target_ongoing_requests:g} ongoing "
                f"requests per replica, upscale after {a.upscale_delay_s:g}s, downscale after {a.downscale_delay_s:g}s")
    limits = [f"{k} {view.options[k]}" for k in ("max_ongoing_requests", "max_queued_requests") if k in view.options]
    return "; ".join([text, *limits])


def format_views(views: list[DeploymentView], accelerator: Accelerator) -> str:
    lines = [f"accelerator: {accelerator}"]
    for v in views:
        lines += ["", v.name,
                  f"  GPU fraction  {v.ray_actor_options.get('num_gpus', 0):g}",
                  f"  CPUs          {v.ray_actor_options.get('num_cpus', 1):g}",
                  f"  replicas      {_scaling_text(v)}"]
        if v.model:
            lines.append(f"  model         {v.model}")
            lines.append(f"  engine_args   {v.engine_args}")
        env = [f"{k}={val}" for k, val in sorted(v.env.items())]
        env += [f"{k}={val}  (set in each replica)" for k, val in v.per_replica_env.items()]
        lines += [f"  {'env' if i == 0 else '':<13} {e}" for i, e in enumerate(env)]
    low = sum(v.ray_actor_options.get("num_gpus", 0) * v.replicas[0] for v in views)
    high = sum(v.ray_actor_options.get("num_gpus", 0) * v.replicas[1] for v in views)
    lines += ["", f"GPUs in use: {low:g} at the fewest replicas, {high:g} at the most"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m serve_app.placement", description=(
        "Show what each deployment asks of Ray and what each engine starts with. No cluster is contacted."))
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"],
                        help="default: the config's accelerator; gpu where it says auto")
    parser.add_argument("--app", help="application name (default: the first)")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        apps = yaml.safe_load(f).get("applications") or []
    app = next((a for a in apps if args.app in (None, a.get("name"))), None)
    if app is None:
        parser.error(f"no application {args.app!r} in {args.config}")
    configured = (app.get("args") or {}).get("accelerator", "auto")
    accelerator = args.accelerator or ("cpu" if configured == "cpu" else "gpu")
    print(format_views(describe(app, accelerator), accelerator))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
