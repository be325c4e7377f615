"""The application builder: ``import_path: serve_app.builder:build_app`` in serve_config.yaml.

Serve validates the config's ``args`` against ``RouterConfig`` (the annotation) before this runs, so this
module keeps real annotations (no ``from __future__ import annotations``).
"""

import logging
from dataclasses import asdict
from typing import Any

import ray
from ray.serve import Application

from deployments.classifier import Classifier
from deployments.ingress import Ingress
from deployments.llm import LLMServer
from deployments.stats import StatsRecorder
from serve_app.config import RouterConfig, deployment_name
from serve_app.placement import CLASSIFIER, INGRESS, STATS, Plan, plan, resolve_accelerator

logger = logging.getLogger("ray.serve")


def build_app(args: RouterConfig) -> Application:
    if not isinstance(args, RouterConfig):  # called directly from Python with a dict
        args = RouterConfig.model_validate(args)
    cluster_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    placement = plan(args, resolve_accelerator(args.accelerator, cluster_gpus))
    for target in placement.targets:
        if target.fallback:
            logger.warning("Route %r: %s serves on CPU in place of %s", target.route, target.served_model,
                           target.configured_model)
    return build_graph(args, placement)


def build_graph(args: RouterConfig, placement: Plan) -> Application:
    d = placement.deployments
    stats = StatsRecorder.options(name=STATS, ray_actor_options=d[STATS].ray_actor_options).bind(
        [r.name for r in args.routes])
    classifier = Classifier.options(
        name=CLASSIFIER, ray_actor_options=d[CLASSIFIER].ray_actor_options, user_config=classifier_user_config(args),
    ).bind(args.classifier.model)
    llms = {}
    for llm in args.llms:
        plan_ = d[deployment_name(llm.name)]
        llms[llm.name] = LLMServer.options(name=plan_.name, ray_actor_options=plan_.ray_actor_options).bind(
            plan_.engine)
    return Ingress.options(
        name=INGRESS, ray_actor_options=d[INGRESS].ray_actor_options, user_config=ingress_user_config(args, placement),
    ).bind(classifier, llms, stats)


def classifier_user_config(args: RouterConfig) -> dict[str, Any]:
    # user_config changes reach live replicas through reconfigure, without a restart.
    return {"classifier": args.classifier.model_dump(), "routes": [r.model_dump() for r in args.routes],
            "default_route": args.default_route}


def ingress_user_config(args: RouterConfig, placement: Plan) -> dict[str, Any]:
    return {"targets": [asdict(t) for t in placement.targets], "default_route": args.default_route,
            "context_turns": args.classifier.context_turns, "request_timeout_s": args.request_timeout_s}

