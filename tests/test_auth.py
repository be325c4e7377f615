"""End to end: API keys on a running router, and logs that hold neither keys nor prompts nor answers.

Keys change what the graph serves, so this module runs its own small graph (the shipped config with one LLM
answering every route), started as an operator would: `ROUTER_API_KEYS` in the environment of `serve run`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from serve_app.config_file import routing_block
from tests.conftest import BASE, SERVE_CONFIG
from tests.local_serve import StartupError, serve_run

pytestmark = pytest.mark.cluster

KEY = "sk-router-test-7d1f0c9a"
OTHER_KEY = "sk-router-test-other-2b8e"
PROMPT_MARKER = "zebra-quartz-4417"  # a word no log line has any business holding


def _one_llm(config: dict) -> dict:
    """The shipped config with llm-general answering every route: one engine, a quicker start."""
    config = copy.deepcopy(config)
    app = config["applications"][0]
    app["args"]["llms"] = [llm for llm in app["args"]["llms"] if llm["name"] == "general"]
    app["deployments"] = [d for d in app["deployments"] if d["name"] not in ("llm-code", "llm-math")]
    for route in routing_block(app)["routes"]:
        route["llm"] = "general"
        route.pop("fallbacks", None)
    return config


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "one_llm.yaml"
    path.write_text(yaml.safe_dump(_one_llm(yaml.safe_load(SERVE_CONFIG.read_text())), sort_keys=False))
    try:
        with serve_run(path, BASE, env={"ROUTER_API_KEYS": f"{KEY},{OTHER_KEY}"}) as running:
            yield running
    except StartupError as exc:
        pytest.fail(str(exc))


ENDPOINTS = [("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
             ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
             ("GET", "/v1/models", None), ("GET", "/stats", None)]


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
    for secret in (KEY, OTHER_KEY, "sk-wrong", PROMPT_MARKER):
        assert secret not in text, f"{secret!r} found in the logs"
    if len(answer) >= 20:
        assert answer not in text
