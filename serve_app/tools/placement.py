"""What each deployment of a Serve config file will ask of Ray, and what each engine starts with.

    python -m serve_app.tools.placement serve_config.yaml [--accelerator gpu|cpu] [--stand-in]

An operator's view of the plan (``serve_app/config/graph.py``) joined with the file's own Serve options
(replicas, autoscaling, queue limits). No cluster is contacted; secrets in the environment are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.config.graph import Accelerator, classifier_placement, plan
from serve_app.config.schema import RouterConfig
from serve_app.llm import kvcached

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


def describe(app: dict[str, Any], accelerator: Accelerator, stand_in: bool = False) -> list[DeploymentView]:
    """The deployments of one application of a Serve config file (a dict), as they will run on ``accelerator``
    (``stand_in``: on a cluster that declares the config's ``cpu_fallback.gpu_stand_in`` resource)."""
    config = RouterConfig.model_validate(app.get("args") or {})
    graph = plan(config, accelerator, config.cpu_fallback.gpu_stand_in if stand_in and accelerator == "cpu" else None)
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments") or []}
    app_env = {k: str(v) for k, v in ((app.get("runtime_env") or {}).get("env_vars") or {}).items()}
    views = [DeploymentView(name, actor, options.get(name, {}),
                            mask_env(app_env | actor.get("runtime_env", {}).get("env_vars", {})))
             for name, actor in graph.ray_actor_options.items()]
    for llm in graph.deployed_llms.values():
        per_replica = {}
        if kvcached.enabled(llm.env):
            per_replica[kvcached.IPC_NAME] = kvcached.ipc_name(llm.deployment, "x" * 8)[:-8] + "<replica id>"
        views.append(DeploymentView(llm.deployment, llm.ray_actor_options, options.get(llm.deployment, {}),
                                    mask_env(app_env | llm.env), per_replica, llm.served_model, llm.engine_args))
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
        resources = v.ray_actor_options.get("resources", {})
        lines += ["", v.name,
                  f"  GPU fraction  {v.ray_actor_options.get('num_gpus', 0):g}",
                  f"  CPUs          {v.ray_actor_options.get('num_cpus', 1):g}",
                  *(f"  resource      {name} {amount:g}" for name, amount in resources.items()),
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


def placement_text(config: RouterConfig, accelerator: Accelerator, stand_in: str | None) -> str:
    """Where the classifier's encoder runs, and why."""
    where = classifier_placement(config, accelerator, stand_in)
    why = (f"placement {config.classifier.placement}" if config.classifier.placement != "auto" else
           "placement auto: it has a GPU share" if where == "deployment" else "placement auto: it runs on a CPU")
    text = "inside each Ingress replica, no hop" if where == "ingress" else "in the Classifier deployment"
    return f"classifier: {text} ({why})"


def main(argv: list[str] | None = None) -> int:
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m serve_app.tools.placement", description=(
        "Show what each deployment asks of Ray and what each engine starts with. No cluster is contacted."))
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"],
                        help="default: the config's accelerator; gpu where it says auto")
    parser.add_argument("--stand-in", action="store_true", help="on the CPU profile: as placed on a cluster that "
                        "declares the config's cpu_fallback.gpu_stand_in resource (the local multi-node cluster)")
    parser.add_argument("--app", help="application name (default: the first)")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        apps = yaml.safe_load(f).get("applications") or []
    app = next((a for a in apps if args.app in (None, a.get("name"))), None)
    if app is None:
        parser.error(f"no application {args.app!r} in {args.config}")
    configured = (app.get("args") or {}).get("accelerator", "auto")
    accelerator = args.accelerator or ("cpu" if configured == "cpu" else "gpu")
    print(format_views(describe(app, accelerator, args.stand_in), accelerator))
    config = RouterConfig.model_validate(app.get("args") or {})
    stand_in = config.cpu_fallback.gpu_stand_in
    print(placement_text(config, accelerator, stand_in if args.stand_in and accelerator == "cpu" else None))
    if accelerator == "cpu" and stand_in:
        print(f"GPU stand-in: {stand_in}. On a cluster that declares this resource, each replica asks for its "
              f"GPU-profile share (num_gpus) of it{'' if args.stand_in else ' (--stand-in shows that plan)'}; "
              "elsewhere it is ignored (docs/cluster.md).")
    for llm in config.llms:
        if llm.external:  # no deployment, no resources: the ingress calls it
            print(f"external llm {llm.name}: {llm.model} at {llm.endpoint}"
                  + (f" (key from ${llm.api_key_env})" if llm.api_key_env else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
