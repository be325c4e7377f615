"""Check a Serve config file before deploying it.

Ray Serve silently drops keys it does not know at every level of its config (a typo such as
``autoscaling_confg`` just disappears). This walks the file against Ray's own pydantic schemas and
validates our application ``args`` against ``RouterConfig``.

    python -m serve_app.config_check serve_config.yaml
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from serve_app.config import RouterConfig

BUILDER = "serve_app.builder:build_app"


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
            RouterConfig.model_validate(application.get("args") or {})
        except Exception as exc:
            from serve_app.config import describe_error

            problems.append(f"applications[{i}].args: {describe_error(exc)}")
        for j, deployment in enumerate(application.get("deployments") or []):
            if "ray_actor_options" in deployment:
                problems.append(
                    f"applications[{i}].deployments[{j}].ray_actor_options: would replace the resources the builder "
                    "sets for the cluster's accelerator; set num_gpus/num_cpus in args instead")
    return problems


def load(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def router_args_index(config: dict[str, Any]) -> int:
    """Index of the (first) application this project builds in a Serve config."""
    for i, application in enumerate(config.get("applications") or []):
        if application.get("import_path") == BUILDER:
            return i
    raise ValueError(f"no application with import_path {BUILDER!r}")


def load_router_config(path: str | Path) -> RouterConfig:
    """The validated ``args`` of this project's application in a Serve config file."""
    config = load(path)
    return RouterConfig.model_validate(config["applications"][router_args_index(config)].get("args") or {})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "serve_config.yaml"
    problems = check(load(path))
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if not problems:
        print(f"{path}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
