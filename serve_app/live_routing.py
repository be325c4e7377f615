"""Routing updates on running replicas: Serve's ``user_config`` reaches ``reconfigure``.

Serve stops a replica whose ``reconfigure`` raises and, when its replacements fail the same way, fails
the whole deployment: one typo in a ``serve deploy`` would take the router down (seen on Ray 2.60). So
a replica that already serves refuses a bad update, logs why and keeps its last good routing. Only a
replica's first routing must be valid: it has nothing else to serve with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from serve_app.config import RoutingConfig, describe_error

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


class RoutingUpdateError(ValueError):
    pass


class LiveRouting(Generic[T]):
    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.version: str | None = None  # fingerprint of the routing in use
        self.refused: str | None = None  # why the latest update was refused, until one is applied

    def apply(self, user_config: Any, build: Callable[[RoutingConfig], T]) -> T | None:
        """``build(routing)`` for a valid update; None for a refused one, and the routing in use stays."""
        try:
            routing = RoutingConfig.model_validate(user_config)
            built = build(routing)
        except ValueError as exc:
            message = describe_error(exc)
            if self.version is None:
                raise RoutingUpdateError(f"{self.deployment}: invalid routing block: {message}") from None
            self.refused = message
            logger.error("%s refused a routing update and still serves routing %s: %s", self.deployment,
                         self.version, message)
            return None
        self.version, self.refused = routing.version, None
        logger.info("%s serves routing %s: routes %s, default %s", self.deployment, routing.version,
                    [r.name for r in routing.routes], routing.default_route)
        return built

    def require(self) -> None:
        """For ``check_health``: a replica started without a routing block fails with this, not at a request."""
        if self.version is None:
            raise RoutingUpdateError(
                f"{self.deployment} has no routing block: set its user_config in the Serve config "
                "(see serve_config.yaml: `user_config: &routing` under Ingress, `user_config: *routing` under "
                "Classifier)")

    def status(self) -> dict[str, str | None]:
        return {"version": self.version, "refused": self.refused}
