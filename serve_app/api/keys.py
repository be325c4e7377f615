"""API keys: ``Authorization: Bearer <key>`` on every endpoint but ``/health``, when keys are configured.

Keys come from the environment of the Ray processes, never from the Serve config (which ends up in the
dashboard, in logs and in version control):

- ``ROUTER_API_KEYS``: comma-separated keys;
- ``ROUTER_API_KEYS_FILE``: a file with one key a line (``#`` starts a comment). It is read again when it
  changes, so keys rotate without a restart; a file that cannot be read or holds no key lets nobody in.

Neither set: the router is open, and says so once at start-up. Only SHA-256 digests of the keys are kept
in memory, and they are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from serve_app.api.errors import OpenAIError

logger = logging.getLogger("ray.serve")

KEYS_ENV = "ROUTER_API_KEYS"
KEYS_FILE_ENV = "ROUTER_API_KEYS_FILE"
_RECHECK_FILE_S = 1.0  # how often a request may look at the key file's modification time


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, keys: str | None = None, keys_file: str | None = None) -> None:
        self._inline = frozenset(_digest(k.strip()) for k in (keys or "").split(",") if k.strip())
        self._file = Path(keys_file) if keys_file else None
        self._from_file: frozenset[bytes] = frozenset()
        self._file_stamp: float | None = None  # None: not read successfully (yet)
        self._unreadable = False
        self._checked_at = 0.0
        if self._file is not None:
            self._reload_file()

    @classmethod
    def from_env(cls) -> ApiKeys:
        keys = cls(os.environ.get(KEYS_ENV), os.environ.get(KEYS_FILE_ENV))
        if not keys.required:
            logger.warning("No API keys are set (%s or %s): every endpoint is open to anyone who can reach it.",
                           KEYS_ENV, KEYS_FILE_ENV)
        return keys

    @property
    def required(self) -> bool:
        return bool(self._inline) or self._file is not None

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless ``authorization`` is ``Bearer <a configured key>`` (or no keys are configured)."""
        if not self.required:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
        digest = _digest(key.strip())
        # Every comparison runs, so the time taken says nothing about which key came close.
        if not any([hmac.compare_digest(digest, known) for known in self._inline | self._keys_from_file()]):
            raise OpenAIError(401, "Incorrect API key.", code="invalid_api_key")

    def _keys_from_file(self) -> frozenset[bytes]:
        if self._file is not None and time.monotonic() - self._checked_at >= _RECHECK_FILE_S:
            self._reload_file()
        return self._from_file

    def _reload_file(self) -> None:
        self._checked_at = time.monotonic()
        try:
            stamp = self._file.stat().st_mtime
            if stamp == self._file_stamp:
                return
            lines = self._file.read_text().splitlines()
        except OSError as exc:
            if not self._unreadable:  # once per outage, not once a second
                logger.error("Cannot read the API key file %s (%s): no key from it is accepted", self._file,
                             type(exc).__name__)
            self._from_file, self._file_stamp, self._unreadable = frozenset(), None, True
            return
        self._from_file = frozenset(_digest(k) for line in lines if (k := line.split("#", 1)[0].strip()))
        self._file_stamp, self._unreadable = stamp, False
        logger.info("Read %d API key(s) from %s", len(self._from_file), self._file)
