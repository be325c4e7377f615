"""Check a Serve config file before deploying it.

Ray Serve silently drops keys it does not know at every level of its config (a typo such as
``autoscaling_confg`` just disappears). This walks the file against Ray's own pydantic schemas and
validates our application: its ``args`` against ``RouterConfig``, its routing block against
``RoutingConfig``, and the routes against the LLMs. Run it before ``serve deploy``: a running router
refuses a bad routing update and keeps the last good one, but the refusal only shows in its logs.

    python -m serve_app.tools.config_check serve_config.yaml
"""

from __future__ import annotations

import sys
import typing
from typing import Any

from pydantic import BaseModel

from serve_app.api.errors import describe_error
from serve_app.config.file import BUILDER, app_config, load_yaml
from serve_app.config.graph import CLASSIFIER
from serve_app.config.schema import RouterConfig


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models an annotation may hold (through Optional, Union, List)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_keys(data: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Paths of keys in ``data`` that ``model`` (recursively) has no field for."""
    if isinstance(data, list):
        return [k for i, item in enumerate(data) for k in unknown_keys(item, model, f"{path}[{i}]")]
    if not isinstance(data, dict):
        return []
    fields = {}
    for name, info in model.model_fields.items():
        fields[name] = info
        if info.alias:
            fields[info.alias] = info
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            found.append(where)
            continue
        for sub in _models_in(fields[key].annotation)[:1]:
            found += unknown_keys(value, sub, where)
    return found


def check(config: dict[str, Any]) -> list[str]:
    """Problems with a Serve config dict, one readable line each; empty when it is fine."""
    from ray.serve.schema import ServeDeploySchema

    problems = [f"{k}: Ray Serve does not know this key and would silently ignore it"
                for k in unknown_keys(config, ServeDeploySchema)]
    for i, application in enumerate(config.get("applications") or []):
        if application.get("import_path") != BUILDER:
            continue
        try:
            app_config({"applications": [application]})
        except ValueError as exc:
            problems.append(f"applications[{i}]: {describe_error(exc)}")
        for j, deployment in enumerate(application.get("deployments") or []):
            if deployment.get("name") == CLASSIFIER and (problem := _classifier_entry(application)):
                problems.append(f"applications[{i}].deployments[{j}]: {problem}")
            if "ray_actor_options" in deployment:
                problems.append(
                    f"applications[{i}].deployments[{j}].ray_actor_options: would replace the resources the builder "
                    "sets for the cluster's accelerator; set num_gpus/num_cpus in args instead")
    return problems


def _classifier_entry(application: dict[str, Any]) -> str | None:
    """Why a Classifier entry would fail the deploy: Serve refuses options for a deployment the graph lacks."""
    try:
        placement = RouterConfig.model_validate(application.get("args") or {}).classifier.placement
    except ValueError:  # bad args are reported on their own
        return None
    if placement == "deployment":
        return None
    if placement == "ingress":
        return (f"with classifier.placement ingress there is no {CLASSIFIER} deployment, and Serve refuses the "
                "deploy; remove the entry")
    return (f"with classifier.placement auto the {CLASSIFIER} deployment exists only where the classifier gets a "
            "GPU share, so on a CPU cluster Serve refuses the deploy; set classifier.placement: deployment to keep it")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "serve_config.yaml"
    problems = check(load_yaml(path))
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if not problems:
        print(f"{path}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
