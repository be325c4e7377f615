"""The application builder: ``import_path: serve_app.builder:build_app`` in serve_config.yaml.

Serve validates the config's ``args`` against ``RouterConfig`` (the annotation) before this runs, so this
module keeps real annotations (no ``from __future__ import annotations``). The routing block is not
built here: it is the Ingress and Classifier ``user_config`` in the Serve config, which Serve hands to
their ``reconfigure``, so changing it never changes what this function builds.
"""

import logging

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
    for target in placement.llms:
        if target.fallback:
            logger.warning("%s serves %s on CPU in place of %s", target.deployment, target.served_model,
                           target.configured_model)
    return build_graph(args, placement)


def build_graph(args: RouterConfig, placement: Plan) -> Application:
    d = placement.deployments
    stats = StatsRecorder.options(name=STATS, ray_actor_options=d[STATS].ray_actor_options).bind()
    c = args.classifier
    classifier = Classifier.options(name=CLASSIFIER, ray_actor_options=d[CLASSIFIER].ray_actor_options).bind(
        c.model, c.max_batch_size, c.batch_wait_timeout_s)
    llms = {}
    for llm in args.llms:
        plan_ = d[deployment_name(llm.name)]
        llms[llm.name] = LLMServer.options(name=plan_.name, ray_actor_options=plan_.ray_actor_options).bind(
            plan_.engine)
    return Ingress.options(name=INGRESS, ray_actor_options=d[INGRESS].ray_actor_options).bind(
        classifier, llms, stats, placement.llms, args.request_timeout_s)
