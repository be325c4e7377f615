"""API keys, without a cluster: what is accepted, what is refused, and rotation through the key file."""

from __future__ import annotations

import logging
import os
import time

import pytest

from serve_app.api.errors import OpenAIError
from serve_app.api.keys import ApiKeys


def _refused(keys: ApiKeys, header: str | None) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        keys.check(header)
    return info.value


def test_no_keys_means_open_and_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("ROUTER_API_KEYS", raising=False)
    monkeypatch.delenv("ROUTER_API_KEYS_FILE", raising=False)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        keys = ApiKeys.from_env()
    assert not keys.required and "every endpoint is open" in caplog.text
    keys.check(None)


def test_inline_keys_need_a_bearer_header(monkeypatch):
    monkeypatch.setenv("ROUTER_API_KEYS", " sk-one , sk-two,")
    monkeypatch.delenv("ROUTER_API_KEYS_FILE", raising=False)
    keys = ApiKeys.from_env()
    keys.check("Bearer sk-one")
    keys.check("bearer sk-two")
    for header, code in [(None, "missing_api_key"), ("sk-one", "missing_api_key"), ("Basic sk-one", "missing_api_key"),
                         ("Bearer ", "missing_api_key"), ("Bearer sk-three", "invalid_api_key"),
                         ("Bearer sk-on", "invalid_api_key")]:
        error = _refused(keys, header)
        assert (error.status, error.code, error.type) == (401, code, "authentication_error")
        assert "sk-" not in error.message  # a refusal never echoes a key


def test_the_key_file_rotates_without_a_restart(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("serve_app.api.keys._RECHECK_FILE_S", 0)
    path = tmp_path / "keys"
    path.write_text("# operators\nsk-old\n\nsk-ops  # on-call\n")
    keys = ApiKeys(keys_file=str(path))
    keys.check("Bearer sk-old")
    keys.check("Bearer sk-ops")
    path.write_text("sk-new\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new modification time, as any rewrite gives
    keys.check("Bearer sk-new")
    assert _refused(keys, "Bearer sk-old").code == "invalid_api_key"
    # An unreadable file lets nobody in (and says so once), rather than opening the router.
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert _refused(keys, "Bearer sk-new").code == "invalid_api_key"
        assert _refused(keys, "Bearer sk-new").code == "invalid_api_key"
    assert caplog.text.count("Cannot read the API key file") == 1
    assert "sk-" not in caplog.text
