"""Configuration updates on running replicas: Serve's ``user_config`` reaches ``reconfigure``.

Serve stops a replica whose ``reconfigure`` raises and, when its replacements fail the same way, fails
the whole deployment: one typo in a ``serve deploy`` would take the router down (seen on Ray 2.60). So
a replica that already serves refuses a bad update, logs why and keeps its last good configuration.
Only a replica's first configuration must be valid: it has nothing else to serve with.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from serve_app.api.errors import describe_error

logger = logging.getLogger("ray.serve")

C = TypeVar("C", bound=BaseModel)
T = TypeVar("T")


class ConfigUpdateError(ValueError):
    pass


def fingerprint(config: BaseModel) -> str:
    """A short fingerprint: which configuration a replica serves with (/health, logs)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


class LiveConfig(Generic[C]):
    def __init__(self, deployment: str, schema: type[C], what: str) -> None:
        self.deployment = deployment
        self.schema = schema
        self.what = what  # how the block is called in messages: "routing block"
        self.version: str | None = None  # fingerprint of the configuration in use
        self.refused: str | None = None  # why the latest update was refused, until one is applied

    async def apply(self, user_config: Any, build: Callable[[C], Awaitable[T]]) -> T | None:
        """``await build(config)`` for a valid update; None for a refused one, and the configuration in use stays."""
        try:
            config = self.schema.model_validate(user_config)
            built = await build(config)
        except ValueError as exc:
            message = describe_error(exc)
            if self.version is None:
                raise ConfigUpdateError(f"{self.deployment}: invalid {self.what}: {message}") from None
            self.refused = message
            logger.error("%s refused an update of its %s and still serves %s: %s", self.deployment, self.what,
                         self.version, message)
            return None
        self.version, self.refused = fingerprint(config), None
        logger.info("%s serves %s %s", self.deployment, self.what, self.version)
        return built

    def require(self, hint: str) -> None:
        """For ``check_health``: a replica started without its configuration fails with this, not at a request."""
        if self.version is None:
            raise ConfigUpdateError(f"{self.deployment} has no {self.what}: {hint}")

    def status(self) -> dict[str, str | None]:
        return {"version": self.version, "refused": self.refused}
