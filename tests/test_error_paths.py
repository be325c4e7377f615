"""End to end: what a client sees when a part of the graph fails, on the running CPU graph.

A stuck or dead classifier replica, a stuck or dead LLM replica, timeouts, and a client that leaves
mid-stream: every request ends with an answer or a clean OpenAI-style error, and the engine stops
generating for requests nobody waits for (vLLM's own token counter, read from Ray's Prometheus endpoint).
Processes are stopped (SIGSTOP) or killed (SIGKILL) for real; Serve restarts what was killed, and each
test leaves the graph healthy. Short timeouts are applied live with `serve deploy` and put back after.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.config import RoutingConfig
from serve_app.config_file import routing_block
from serve_app.live_config import fingerprint
from tests.conftest import SERVE_CONFIG
from tests.local_serve import LocalServe, serve_deploy

pytestmark = pytest.mark.cluster

REQUEST_TIMEOUT_S = 4
CLASSIFIER_TIMEOUT_S = 1
LONG_TOKENS = 1500  # minutes of decoding on this CPU: a request that long is only short if it was aborted
RECOVERY_S = 300  # a killed vLLM replica restarts: engine start and compile (cache warm) on 2 busy cores


def _chat(base: str, text: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": text}], "max_tokens": 2, **body})


def _wait(condition, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := condition():
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"not {what} after {timeout_s:.0f}s")


def _replica(graph: LocalServe, deployment: str):
    [proc] = graph.processes(f"ServeReplica:router:{deployment}")
    return proc


@contextlib.contextmanager
def _stopped(graph: LocalServe, deployment: str):
    """The deployment's replica process frozen (SIGSTOP), as a wedged process looks from outside."""
    proc = _replica(graph, deployment)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def _generated_tokens(graph: LocalServe) -> float:
    """Tokens every vLLM engine of the graph has generated, from vLLM's own counter on Ray's Prometheus endpoint."""
    url = graph.metrics_url()
    assert url, "Ray's metrics export port was not found"
    text = httpx.get(url, timeout=10).text
    # An engine exports the counter once it has generated: none yet means nothing was generated there.
    pattern = r"^ray_vllm_generation_tokens_total\{[^}]*\} (\S+)$"
    return sum(float(m[1]) for m in re.finditer(pattern, text, re.MULTILINE))


def _generation_stops(graph: LocalServe, timeout_s: float = 90) -> float:
    """The engines' token count once it has stopped growing (Ray reports metrics every second in these tests)."""
    deadline = time.monotonic() + timeout_s
    last = _generated_tokens(graph)
    while time.monotonic() < deadline:
        time.sleep(4)
        now = _generated_tokens(graph)
        if now == last:
            return now
        last = now
    pytest.fail(f"the engines were still generating after {timeout_s:.0f}s")


def _deploy_routing(graph: LocalServe, config: dict, path: Path) -> None:
    """serve deploy a config and wait until the Ingress serves its routing block."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    deployed = serve_deploy(path, graph.dashboard_url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    version = fingerprint(RoutingConfig.model_validate(routing_block(config["applications"][0])))
    _wait(lambda: httpx.get(f"{graph.base_url}/health", timeout=10).json()["routing"]["version"] == version,
          f"serving routing {version}", 120)


class _Stream(threading.Thread):
    """A long streamed completion read in the background, chunk by chunk."""

    def __init__(self, base: str, model: str, max_tokens: int = LONG_TOKENS) -> None:
        super().__init__(daemon=True)
        self.body = {"model": model, "messages": [{"role": "user", "content": "Tell me a very long story."}],
                     "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        self.base = base
        self.lines: list[str] = []
        self.first = threading.Event()
        self.leave = threading.Event()  # set to close the connection mid-stream, as a client that goes away
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.base}/v1/chat/completions", json=self.body, timeout=300) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        self.first.set()
                    if self.leave.is_set():
                        return
        except BaseException as exc:
            self.error = exc
        finally:
            self.first.set()


# ---- with the shipped timeouts ------------------------------------------------------------------------

def test_a_client_that_leaves_mid_stream_stops_the_generation(graph):
    before = _generation_stops(graph)
    stream = _Stream(graph.base_url, "code", max_tokens=LONG_TOKENS)
    stream.start()
    assert stream.first.wait(120) and stream.error is None, stream.error
    _wait(lambda: _generated_tokens(graph) > before, "generating (as vLLM's metrics say)", 60)
    stream.leave.set()
    stream.join(30)
    # LONG_TOKENS take minutes here: the engine stops long before, because the router aborted the request.
    generated = _generation_stops(graph) - before
    assert 0 < generated < LONG_TOKENS / 2
    stats = httpx.get(f"{graph.base_url}/stats", timeout=10).json()
    assert stats["errors"]["by_status"].get("499", 0) >= 1


def test_a_model_replica_that_dies_mid_request_answers_cleanly_and_comes_back(graph):
    stream = _Stream(graph.base_url, "math")
    stream.start()
    assert stream.first.wait(120) and stream.error is None, stream.error
    answers: list[httpx.Response] = []
    whole = threading.Thread(target=lambda: answers.append(
        _chat(graph.base_url, "Tell me a very long story.", model="math", max_tokens=LONG_TOKENS, ignore_eos=True)))
    whole.start()
    time.sleep(3)  # both requests are being generated
    _replica(graph, "llm-math").kill()
    whole.join(120)
    stream.join(120)

    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["type"] == "service_unavailable_error"
    assert answer.headers["x-router-category"] == "math"
    # The stream had sent its status and tokens: it ends with an error event and [DONE], never silently.
    assert stream.error is None, stream.error
    assert stream.lines[-1] == "data: [DONE]"
    assert json.loads(stream.lines[-2][6:])["error"]["type"] == "service_unavailable_error"
    assert "Traceback" not in answer.text + "".join(stream.lines)

    _wait(lambda: _chat(graph.base_url, "What is 2 + 2?", model="math").status_code == 200, "answering again",
          RECOVERY_S)
    _wait(lambda: httpx.get(f"{graph.base_url}/health", timeout=10).status_code == 200, "healthy", 60)


# ---- with timeouts an error path reaches in seconds (applied live, put back at the end) --------------------

@pytest.fixture(scope="module")
def short_timeouts(graph, tmp_path_factory):
    shipped = yaml.safe_load(SERVE_CONFIG.read_text())
    short = copy.deepcopy(shipped)
    routing_block(short["applications"][0]).update(request_timeout_s=REQUEST_TIMEOUT_S,
                                                   classifier_timeout_s=CLASSIFIER_TIMEOUT_S)
    folder = tmp_path_factory.mktemp("timeouts")
    _deploy_routing(graph, short, folder / "short.yaml")
    yield
    _deploy_routing(graph, shipped, folder / "shipped.yaml")


def test_a_stuck_classifier_hands_the_request_to_the_default_route(graph, short_timeouts):
    with _stopped(graph, "Classifier"):
        started = time.monotonic()
        response = _chat(graph.base_url, "Write a Python function to sort a list")
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert (response.headers["x-router-category"], response.headers["x-router-reason"]) == (
        "general", "classifier_error")
    assert CLASSIFIER_TIMEOUT_S <= elapsed < 30
    # Once the replica runs again, requests are classified again.
    _wait(lambda: _chat(graph.base_url, "Write a Python function to sort a list").headers["x-router-reason"]
          == "classified", "classifying again", 60)


def test_a_dead_classifier_replica_loses_no_request(graph, short_timeouts):
    _replica(graph, "Classifier").kill()
    answers = [_chat(graph.base_url, "Solve the integral of x^2 dx") for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-router-reason"] for a in answers} <= {"classifier_error", "classified"}
    _wait(lambda: _chat(graph.base_url, "Solve the integral of x^2 dx").headers["x-router-reason"] == "classified",
          "classifying again", 120)


def test_a_stuck_model_is_a_504_streamed_or_not(graph, short_timeouts):
    with _stopped(graph, "llm-code"):
        whole = _chat(graph.base_url, "Write a Python function to sort a list", model="code")
        with httpx.stream("POST", f"{graph.base_url}/v1/chat/completions", timeout=60, json={
                "model": "code", "stream": True, "messages": [{"role": "user", "content": "Write a sort"}]}) as r:
            streamed_status, streamed_body = r.status_code, json.loads(r.read())
    assert whole.status_code == 504, whole.text
    assert whole.json()["error"] == {"message": "The code model did not answer in time.", "type": "timeout_error",
                                     "code": "timeout", "param": None}
    assert (streamed_status, streamed_body["error"]["code"]) == (504, "timeout")
    _wait(lambda: _chat(graph.base_url, "Hi", model="code").status_code == 200, "answering again", 120)


def test_a_request_past_its_timeout_is_aborted_in_the_engine(graph, short_timeouts):
    before = _generation_stops(graph)
    # LONG_TOKENS cannot be generated within REQUEST_TIMEOUT_S: the client gets a 504 ...
    response = _chat(graph.base_url, "Tell me a very long story.", model="general", max_tokens=LONG_TOKENS,
                     ignore_eos=True)
    assert response.status_code == 504, response.text
    # ... and the engine stops generating it, instead of finishing an answer nobody will read.
    generated = _generation_stops(graph) - before
    assert 0 < generated < LONG_TOKENS / 2
