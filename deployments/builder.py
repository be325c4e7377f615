"""The application builder: ``import_path: deployments.builder:build_app`` in serve_config.yaml.

The one module of ``serve_app`` that touches Ray: it composes the deployments of ``deployments/`` from
the pure plan (``serve_app/config/graph.py``). Serve validates the config's ``args`` against ``RouterConfig``
(the annotation) before this runs, so this module keeps real annotations (no ``from __future__ import
annotations``). Routing and batching are not built here: they are the Ingress's and the Classifier's
``user_config``, which Serve hands to their ``reconfigure``, so changing them never changes what this
function builds.
"""

import logging

import ray
from ray.serve import Application

from deployments.classifier import Classifier
from deployments.ingress import Ingress
from deployments.llm import VLLMServer
from deployments.stats import StatsAggregator
from serve_app.config.graph import (
    CLASSIFIER,
    INGRESS,
    STATS,
    GraphPlan,
    plan,
    resolve_accelerator,
    resolve_stand_in,
)
from serve_app.config.schema import RouterConfig

logger = logging.getLogger("ray.serve")


def build_app(args: RouterConfig) -> Application:
    if not isinstance(args, RouterConfig):  # called directly from Python with a dict
        args = RouterConfig.model_validate(args)
    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    accelerator = resolve_accelerator(args.accelerator, cluster.get("GPU", 0))
    graph = plan(args, accelerator, resolve_stand_in(args, accelerator, cluster))
    logger.info("Classifier placement: %s (configured %s, accelerator %s)", graph.classifier_placement,
                args.classifier.placement, accelerator)
    for llm in graph.deployed_llms.values():
        if llm.cpu_fallback:
            logger.warning("%s serves %s on CPU in place of %s", llm.deployment, llm.served_model, llm.configured_model)
    return build_graph(args, graph)


def build_graph(args: RouterConfig, graph: GraphPlan) -> Application:
    actor = graph.ray_actor_options
    stats = StatsAggregator.options(name=STATS, ray_actor_options=actor[STATS]).bind()
    # In the ingress, the encoder's config is all it needs: it loads the model in each of its replicas.
    classifier = (Classifier.options(name=CLASSIFIER, ray_actor_options=actor[CLASSIFIER]).bind(args.classifier)
                  if graph.classifier_placement == "deployment" else args.classifier)
    llms = {name: VLLMServer.options(name=llm.deployment, ray_actor_options=llm.ray_actor_options).bind(llm)
            for name, llm in graph.deployed_llms.items()}
    return Ingress.options(name=INGRESS, ray_actor_options=actor[INGRESS]).bind(classifier, llms, stats, graph.llms)
