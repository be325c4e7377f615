"""``serve_config.yaml`` as this project reads it: where its two parts live in a Serve config file.

The application this project builds (``import_path: serve_app.builder:build_app``) keeps

- its serving graph in ``args`` (``RouterConfig``): changing it rebuilds the application;
- its routing policy in the ``user_config`` of the Ingress deployment, which the Classifier shares
  through a YAML anchor (``user_config: &routing`` ... ``user_config: *routing``): ``serve deploy``
  applies a change to it to the running replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serve_app.config import AppConfig, RouterConfig, RoutingConfig, describe_error
from serve_app.placement import CLASSIFIER, INGRESS

BUILDER = "serve_app.builder:build_app"
ROUTING_DEPLOYMENTS = (INGRESS, CLASSIFIER)
ROUTING_WHERE = f"deployments {INGRESS}/{CLASSIFIER} user_config (the routing block)"


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def application_index(config: dict[str, Any]) -> int:
    """Index of the (first) application this project builds in a Serve config."""
    for i, application in enumerate(config.get("applications") or []):
        if application.get("import_path") == BUILDER:
            return i
    raise ValueError(f"no application with import_path {BUILDER!r}")


def routing_block(application: dict[str, Any]) -> dict[str, Any]:
    """The routing ``user_config`` of an application dict; the Ingress and Classifier must hold the same one."""
    given = {d.get("name"): d.get("user_config") for d in application.get("deployments") or []}
    missing = [name for name in ROUTING_DEPLOYMENTS if given.get(name) is None]
    if missing:
        raise ValueError(f"deployments {missing} have no user_config: the routing block (routes, examples, "
                         f"thresholds) is the user_config of {INGRESS} and {CLASSIFIER}, as in serve_config.yaml")
    if given[INGRESS] != given[CLASSIFIER]:
        raise ValueError(f"{INGRESS} and {CLASSIFIER} hold different routing blocks: write `user_config: &routing` "
                         f"under {INGRESS} and `user_config: *routing` under {CLASSIFIER}")
    return given[INGRESS]


def app_config(config: dict[str, Any]) -> AppConfig:
    """The validated application of a Serve config dict; a ValueError says where each problem is."""
    application = config["applications"][application_index(config)]
    problems = []
    try:
        router = RouterConfig.model_validate(application.get("args") or {})
    except ValueError as exc:
        problems.append(f"args: {describe_error(exc)}")
    try:
        routing = RoutingConfig.model_validate(routing_block(application))
    except ValueError as exc:
        problems.append(f"{ROUTING_WHERE}: {describe_error(exc)}")
    if problems:
        raise ValueError("; ".join(problems))
    return AppConfig(router=router, routing=routing)


def load_app_config(path: str | Path) -> AppConfig:
    return app_config(load_yaml(path))
