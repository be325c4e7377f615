"""End to end: API keys on a running router, and logs that hold neither keys nor prompts nor answers.

Keys change what the graph serves, so this module runs on the second graph (tests/conftest.py `mixed_graph`:
examples/external.yaml), started as an operator would: `ROUTER_API_KEYS` in the environment of `serve run`.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import BASE, OTHER_ROUTER_KEY, ROUTER_KEY, UPSTREAM_KEY

pytestmark = pytest.mark.cluster

KEY, OTHER_KEY = ROUTER_KEY, OTHER_ROUTER_KEY
PROMPT_MARKER = "zebra-quartz-4417"  # a word no log line has any business holding


@pytest.fixture(scope="module")
def keyed(mixed_graph):
    return mixed_graph


ENDPOINTS = [("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
             ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
             ("GET", "/v1/models", None), ("GET", "/v1/models/auto", None), ("GET", "/stats", None)]


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_every_endpoint_but_health_needs_a_key(keyed, method, path, body):
    for headers, code in [({}, "missing_api_key"), ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
                          ({"Authorization": KEY}, "missing_api_key")]:
        r = httpx.request(method, f"{BASE}{path}", json=body, headers=headers, timeout=60)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == {"message": r.json()["error"]["message"], "type": "authentication_error",
                                     "code": code, "param": None}
    r = httpx.request(method, f"{BASE}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text


def test_health_stays_open_and_says_nothing_of_keys(keyed):
    r = httpx.get(f"{BASE}/health", timeout=10)
    assert r.status_code == 200 and KEY not in r.text and "ROUTER_API_KEYS" not in r.text


def test_the_openai_client_with_a_key_and_logs_that_hold_no_key_prompt_or_answer(keyed):
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=OTHER_KEY, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="auto", max_tokens=24, messages=[{"role": "user", "content": f"Say hello to {PROMPT_MARKER}"}])
    answer = reply.choices[0].message.content
    assert answer
    stream = client.chat.completions.create(
        model="auto", max_tokens=8, stream=True, messages=[{"role": "user", "content": f"Spell {PROMPT_MARKER}"}])
    assert [c for c in stream if c.choices]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{BASE}/v1", api_key="sk-wrong", max_retries=0).models.list()

    logs = [p for p in Path(keyed.ray_tmp).rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "POST /v1/chat/completions" in text  # the access log is there: the search reads the right files
    for secret in (KEY, OTHER_KEY, "sk-wrong", PROMPT_MARKER, UPSTREAM_KEY):
        assert secret not in text, f"{secret!r} found in the logs"
    if len(answer) >= 20:
        assert answer not in text
