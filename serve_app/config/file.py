"""``serve_config.yaml`` as this project reads it: where each part lives in a Serve config file.

The application this project builds (``import_path: deployments.builder:build_app``) keeps

- its serving graph in ``args`` (``RouterConfig``): changing it starts new replicas;
- its routing block in the ``user_config`` of the Ingress deployment (``RoutingConfig``), and, where the
  classifier has a deployment of its own (``classifier.placement``), its batching in the ``user_config`` of the
  Classifier deployment (``ClassifierBatching``): ``serve deploy`` applies a change to either to the running
  replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serve_app.api.errors import describe_error
from serve_app.config.graph import CLASSIFIER, INGRESS
from serve_app.config.schema import AppConfig, ClassifierBatching, RouterConfig, RoutingConfig

BUILDER = "deployments.builder:build_app"
ROUTING_WHERE = f"deployments {INGRESS} user_config (the routing block)"
BATCHING_WHERE = f"deployments {CLASSIFIER} user_config"


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def application_index(config: dict[str, Any]) -> int:
    """Index of the (first) application this project builds in a Serve config."""
    for i, application in enumerate(config.get("applications") or []):
        if application.get("import_path") == BUILDER:
            return i
    raise ValueError(f"no application with import_path {BUILDER!r}")


def user_config(application: dict[str, Any], deployment: str) -> Any:
    return next((d.get("user_config") for d in application.get("deployments") or [] if d.get("name") == deployment),
                None)


def routing_block(application: dict[str, Any]) -> dict[str, Any]:
    """The routing ``user_config`` of an application dict: the Ingress's."""
    block = user_config(application, INGRESS)
    if block is None:
        raise ValueError(f"deployment {INGRESS} has no user_config: the routing block (routes, examples, "
                         "thresholds) is its user_config, as in serve_config.yaml")
    return block


def app_config(config: dict[str, Any]) -> AppConfig:
    """The validated application of a Serve config dict; a ValueError says where each problem is."""
    application = config["applications"][application_index(config)]
    problems, parts = [], {}
    for key, where, read in (
        ("router", "args", lambda: RouterConfig.model_validate(application.get("args") or {})),
        ("routing", ROUTING_WHERE, lambda: RoutingConfig.model_validate(routing_block(application))),
        ("batching", BATCHING_WHERE,
         lambda: ClassifierBatching.model_validate(user_config(application, CLASSIFIER) or {})),
    ):
        try:
            parts[key] = read()
        except ValueError as exc:
            problems.append(f"{where}: {describe_error(exc)}")
    if problems:
        raise ValueError("; ".join(problems))
    return AppConfig(**parts)


def load_app_config(path: str | Path) -> AppConfig:
    return app_config(load_yaml(path))
