"""The router behind Ray Serve's HAProxy ingress (docs/benchmarks.md: it halves what a request costs).

HAProxy forwards each request straight to an Ingress replica's own HTTP server, so Serve's Python proxy is
not on the path. The same OpenAI surface must hold there: routing headers, streams, OpenAI-style errors,
/health and /stats, all on loopback. The LLMs are one instant stub endpoint: what is tested is the HTTP path.
"""

from __future__ import annotations

import httpx
import openai
import psutil
import pytest

from tests.conftest import BASE


@pytest.fixture(scope="module")
def client(haproxy_graph) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused", max_retries=0, timeout=60)


def test_haproxy_answers_on_loopback_port_8000(haproxy_graph):
    listening = set()
    for proc in haproxy_graph.processes(""):
        try:
            if proc.name().startswith("haproxy"):
                listening |= {c.laddr for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a process of an earlier configuration, gone after a reload
            pass
    assert ("127.0.0.1", 8000) in listening  # and its metrics and stats listeners: every one on loopback
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening


def test_a_request_is_routed_by_meaning(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a Python function to sort a list"}], max_tokens=8)
    assert (raw.headers["x-router-category"], raw.headers["x-router-reason"]) == ("code", "classified")
    assert raw.parse().choices[0].message.content


def test_a_stream_is_relayed_event_by_event(client):
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the integral of x^2?"}], max_tokens=8,
        stream=True)
    chunks = [c for c in stream if c.choices and c.choices[0].delta.content]
    assert len(chunks) > 1


def test_bad_input_is_an_openai_error(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="auto", messages=[])
    assert error.value.status_code == 400 and error.value.body["message"]
    unknown = httpx.post(f"{BASE}/v1/chat/completions", timeout=30,
                         json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_health_and_stats(haproxy_graph, client):
    health = httpx.get(f"{BASE}/health", timeout=10).json()
    assert health["status"] == "ok" and "Classifier" not in health["deployments"]
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hi there"}], max_tokens=4)
    stats = httpx.get(f"{BASE}/stats", timeout=10).json()
    assert stats["total_requests"] >= 3
