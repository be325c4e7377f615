"""OpenAI-style errors: ``{"error": {"message", "type", "code", "param"}}`` with the right HTTP status.

The one place errors are formatted: the ingress, the LLM replicas and the config tools all turn
pydantic validation errors into text here, and every error a client sees is an ``OpenAIError``.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error a client should see, with an HTTP status and an OpenAI-style body.

    It crosses Ray's process boundaries (an LLM replica raises it, the ingress answers with it), so it
    pickles by its fields rather than by ``args``.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.status, self.message, self.code, self.param, self.type)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    @classmethod
    def invalid(cls, exc: Exception, prefix: str = "Invalid request") -> OpenAIError:
        """A 400 naming the first invalid parameter of a pydantic ``ValidationError``."""
        first = exc.errors()[0]
        where = _location(first["loc"])
        return cls(400, f"{prefix}: {describe_error(exc)}", code="invalid_parameter", param=where or None)


def _rebuild(status: int, message: str, code: str | None, param: str | None, type: str) -> OpenAIError:
    return OpenAIError(status, message, code=code, param=param, type=type)


def describe_error(exc: Exception) -> str:
    """One readable line per pydantic error: ``routes.0.exampels: Extra inputs are not permitted``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        where = _location(err["loc"])
        msg = re.sub(r"^Value error, ", "", err["msg"])
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(dict.fromkeys(lines))  # a union repeats one complaint per member


def _location(loc: tuple[Any, ...]) -> str:
    # pydantic appends the union member that failed ("str", "list[str]"): the parameter is what comes before it.
    parts = []
    for p in loc:
        if isinstance(p, str) and re.fullmatch(r"(str|int|bool|float|list\[.*\]|dict\[.*\])", p):
            break
        parts.append(str(p))
    return ".".join(parts)


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
