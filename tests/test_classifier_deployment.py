"""The classifier in a deployment of its own (classifier.placement: deployment), as on a GPU graph.

The mixed graph (tests/conftest.py ``mixed_graph``) runs it this way; the shared graph runs the encoder inside
its Ingress. A request is never lost to the classifier: stuck or dead, the default route answers within
``classifier_timeout_s``, and requests are classified again once a replica runs.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from harness.local_serve import LocalServe
from serve_app.config.schema import RoutingConfig
from tests.conftest import ROUTER_KEY

AUTH = {"Authorization": f"Bearer {ROUTER_KEY}"}
CODE = "Write a Python function to sort a list"
CLASSIFIER_TIMEOUT_S = RoutingConfig.model_fields["classifier_timeout_s"].default  # the example keeps it


def _chat(base_url: str, text: str) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", headers=AUTH, timeout=120, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": text}]})


def _reason(graph: LocalServe) -> str:
    return _chat(graph.base_url, CODE).headers.get("x-router-reason", "")


def _wait_classified(graph: LocalServe, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _reason(graph) != "classified":
        assert time.monotonic() < deadline, f"not classifying again after {timeout_s}s"
        time.sleep(2)


@pytest.fixture
def classifier(mixed_graph):
    procs = mixed_graph.processes("ServeReplica:router:Classifier")
    assert len(procs) == 1, "the mixed graph runs one Classifier replica"
    assert _reason(mixed_graph) == "classified"
    return procs[0]


def test_the_graph_has_a_classifier_deployment(mixed_graph):
    health = httpx.get(f"{mixed_graph.base_url}/health", timeout=10).json()
    assert health["deployments"]["Classifier"] == "HEALTHY"
    response = _chat(mixed_graph.base_url, CODE)
    assert (response.status_code, response.headers["x-router-category"]) == (200, "code")


def test_a_stuck_classifier_hands_the_request_to_the_default_route(mixed_graph, classifier):
    os.kill(classifier.pid, signal.SIGSTOP)  # a wedged process, as it looks from outside
    try:
        started = time.monotonic()
        response = _chat(mixed_graph.base_url, CODE)
        elapsed = time.monotonic() - started
    finally:
        os.kill(classifier.pid, signal.SIGCONT)
    assert response.status_code == 200, response.text
    assert (response.headers["x-router-category"], response.headers["x-router-reason"]) == (
        "general", "classifier_error")
    assert CLASSIFIER_TIMEOUT_S <= elapsed < CLASSIFIER_TIMEOUT_S + 30
    _wait_classified(mixed_graph, 60)


def test_a_dead_classifier_replica_loses_no_request(mixed_graph, classifier):
    classifier.kill()
    answers = [_chat(mixed_graph.base_url, CODE) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-router-reason"] for a in answers} <= {"classifier_error", "classified"}
    _wait_classified(mixed_graph, 180)
