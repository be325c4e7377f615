"""End to end: what a client sees when a part of the graph fails, on the running CPU graph.

A stuck or dead classifier replica, a stuck or dead LLM replica, a burst beyond the queues, timeouts, and a
client that leaves mid-stream: every request ends with an answer (the fallback's, when its own model could
not give one) or a clean OpenAI-style error, and the engine stops
generating for requests nobody waits for (vLLM's own token counter, read from Ray's Prometheus endpoint).
Processes are stopped (SIGSTOP) or killed (SIGKILL) for real; Serve restarts what was killed, and each
test leaves the graph healthy. Short timeouts and small queues are applied live with `serve deploy` (Serve
changes them in place) and put back after.
"""

from __future__ import annotations

import concurrent.futures
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

from harness.local_serve import LocalServe, dashboard_json, serve_deploy
from serve_app.config.file import routing_block
from serve_app.config.live import fingerprint
from serve_app.config.schema import RoutingConfig
from tests.conftest import SERVE_CONFIG

pytestmark = pytest.mark.cluster

REQUEST_TIMEOUT_S = 4
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
    """The deployment's replica processes frozen (SIGSTOP), as a wedged process looks from outside."""
    procs = graph.processes(f"ServeReplica:router:{deployment}")
    assert procs, f"no replica of {deployment}"
    for proc in procs:
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)


def _router_handles(graph: LocalServe, deployment: str) -> set[str]:
    """The handles that sent requests to ``deployment``, from Serve's own router metric (one per handle)."""
    text = httpx.get(graph.metrics_url(), timeout=10).text
    handles = set()
    for line in text.splitlines():
        if line.startswith("ray_serve_num_router_requests") and f'deployment="{deployment}"' in line:
            handles |= set(re.findall(r'handle="([^"]+)"', line))
    return handles


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


def _deploy(graph: LocalServe, config: dict, path: Path, applied) -> None:
    """serve deploy a config and wait until ``applied()`` says the running graph has it."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    deployed = serve_deploy(path, graph.dashboard_url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    _wait(applied, f"running with {path.name}", 120)


def _routing_version(graph: LocalServe, config: dict):
    version = fingerprint(RoutingConfig.model_validate(routing_block(config["applications"][0])))
    return lambda: httpx.get(f"{graph.base_url}/health", timeout=10).json()["routing"]["version"] == version


def _serve_option(graph: LocalServe, deployment: str, option: str):
    """A deployment's option as Serve runs it now (its REST API)."""
    application = dashboard_json(graph.dashboard_url, "/api/serve/applications/")["applications"]["router"]
    return application["deployments"][deployment]["deployment_config"][option]


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

def _unhandled_errors(graph: LocalServe) -> int:
    """Tracebacks the Ingress logged as unexpected: a client going away is not one."""
    return sum(path.read_text(errors="replace").count("Unhandled error in the router")
               for path in Path(graph.ray_tmp).glob("**/serve/replica_*Ingress*.log"))


def test_a_client_that_leaves_mid_stream_stops_the_generation(graph):
    before, unhandled = _generation_stops(graph), _unhandled_errors(graph)
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
    assert _unhandled_errors(graph) == unhandled  # Serve's cancellation is logged as a disconnect, not an error


def _load_outcome(base: str, text: str, stream: bool) -> str:
    """One request of a load, told as: answered, fallback (answered by another route), clean_error, lost."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 24, "stream": stream}
    try:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=RECOVERY_S) as r:
            if stream:
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            else:
                r.read()
    except httpx.HTTPError:
        return "lost"  # no answer: a hang, a reset connection
    if not stream:
        if r.status_code == 200:
            return "fallback" if "x-router-fallback" in r.headers else "answered"
        return "lost" if r.status_code >= 500 else "clean_error"
    if r.status_code != 200 or not lines or lines[-1] != "data: [DONE]":
        return "lost"  # a stream must end with [DONE], an error event before it if it failed
    if any('"error"' in line for line in lines):
        return "clean_error"
    return "fallback" if "x-router-fallback" in r.headers else "answered"


def test_a_model_replica_killed_under_load_loses_no_request(graph):
    # 60 requests the classifier sends to the code route, 6 at a time, half streamed; llm-code's replica is
    # killed while they run. Those that had not started streaming are answered by the code route's fallback.
    texts = [f"Write a Python function that sorts a list of {n} integers" for n in range(60)]
    outcomes: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_load_outcome, graph.base_url, text, i % 2 == 0) for i, text in enumerate(texts)]
        time.sleep(4)
        _replica(graph, "llm-code").kill()
        outcomes = [f.result() for f in futures]
    counts = {k: outcomes.count(k) for k in ("answered", "fallback", "clean_error", "lost")}
    print(f"\nreplica kill under load: sent {len(texts)}, {counts}")
    assert counts["lost"] == 0
    assert counts["fallback"] >= 1  # in flight when the replica died, answered by llm-general
    assert sum(counts.values()) == len(texts)
    stats = httpx.get(f"{graph.base_url}/stats", timeout=10).json()
    assert stats["model_fallbacks"]["by_path"].get("code->general", 0) >= counts["fallback"]
    assert stats["model_fallbacks"]["by_cause"].get("unavailable", 0) >= 1
    _wait(lambda: _chat(graph.base_url, "Hi", model="code").status_code == 200, "answering again", RECOVERY_S)
    _wait(lambda: httpx.get(f"{graph.base_url}/health", timeout=10).status_code == 200, "healthy", 60)


def test_a_deployment_with_no_running_replica_is_routed_around_not_queued(graph):
    # llm-math's replica killed: once Serve's status shows no running replica (its health check notices within
    # seconds), requests for math go to its fallback (auto), or get 503 + Retry-After (named), at once; even one
    # already waiting in Serve's queue is given up, instead of waiting a minute or more for a new engine.
    killed = time.monotonic()
    _replica(graph, "llm-math").kill()
    first = _chat(graph.base_url, "Solve 3x + 7 = 22 for x")
    waited = time.monotonic() - killed
    print(f"\nllm-math killed: the first math request answered after {waited:.1f}s by "
          f"{first.headers.get('x-router-category')} ({first.headers.get('x-router-fallback-cause')})")
    assert first.status_code == 200 and first.headers["x-router-category"] == "general"
    assert first.headers["x-router-fallback-cause"] == "unavailable" and waited < 45
    started = time.monotonic()
    again = _chat(graph.base_url, "Find the derivative of x^3")
    named = _chat(graph.base_url, "Solve 3x + 7 = 22 for x", model="math")
    assert again.headers.get("x-router-fallback-cause") == "unavailable" and again.status_code == 200
    assert named.status_code == 503 and named.headers["retry-after"] == "1"
    assert named.json()["error"]["code"] == "upstream_error" and time.monotonic() - started < 20
    _wait(lambda: _chat(graph.base_url, "What is 2 + 2?", model="math").status_code == 200, "answering again",
          RECOVERY_S)
    _wait(lambda: httpx.get(f"{graph.base_url}/health", timeout=10).status_code == 200, "healthy", 60)


def test_a_stream_cut_after_its_first_token_ends_with_an_error_event(graph):
    stream = _Stream(graph.base_url, "math")
    stream.start()
    assert stream.first.wait(120) and stream.error is None, stream.error
    time.sleep(2)
    _replica(graph, "llm-math").kill()
    stream.join(120)
    # The stream had sent its status and tokens: it ends with an error event and [DONE], never silently.
    assert stream.error is None, stream.error
    assert stream.lines[-1] == "data: [DONE]"
    error = json.loads(stream.lines[-2][6:])["error"]
    assert error["type"] == "service_unavailable_error" and "Traceback" not in error["message"]
    _wait(lambda: _chat(graph.base_url, "What is 2 + 2?", model="math").status_code == 200, "answering again",
          RECOVERY_S)
    _wait(lambda: httpx.get(f"{graph.base_url}/health", timeout=10).status_code == 200, "healthy", 60)


def test_a_burst_beyond_the_queues_spills_over_then_gets_429_at_once(graph, tmp_path):
    shipped = yaml.safe_load(SERVE_CONFIG.read_text())
    small = copy.deepcopy(shipped)
    for d in small["applications"][0]["deployments"]:
        if d["name"] in ("llm-code", "llm-general"):  # Serve changes these in place: no replica restarts
            d.update(max_ongoing_requests=2, max_queued_requests=2)
    _deploy(graph, small, tmp_path / "small.yaml",
            lambda: _serve_option(graph, "llm-code", "max_queued_requests") == 2)
    try:
        before = httpx.get(f"{graph.base_url}/stats", timeout=10).json()

        def ask(n: int) -> httpx.Response:
            # Answers long enough (a minute here, on a fast CPU too) that no slot frees while the named requests
            # below probe.
            return _chat(graph.base_url, f"Write a Python function that reverses a list of {n} strings",
                         max_tokens=480, ignore_eos=True)

        first_429 = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(ask, n) for n in range(30)]
            for f in futures:
                f.add_done_callback(lambda f: f.result().status_code == 429 and first_429.set())
            # While the burst holds both queues full, a request naming the code model (no classification, no
            # fallback for named models) is refused at once instead of queueing. llm-code's engine is paused
            # meanwhile, so no slot frees while they probe (a fast CPU finishes answers in seconds).
            assert first_429.wait(120)
            named = []
            with _stopped(graph, "llm-code"):
                for _ in range(5):
                    started = time.monotonic()
                    named.append((_chat(graph.base_url, "Write a sort", model="code"), time.monotonic() - started))
            results = [f.result() for f in futures]
        by_code = [r for r in results if r.status_code == 200 and "x-router-fallback" not in r.headers]
        spilled = [r for r in results if r.status_code == 200 and "x-router-fallback" in r.headers]
        rejected = [r for r in results if r.status_code == 429]
        print(f"\nburst of 30: {len(by_code)} by code, {len(spilled)} spilled to general, {len(rejected)} got 429; "
              f"429s for the named model after {', '.join(f'{t * 1000:.0f}' for _, t in named)} ms")
        assert len(by_code) + len(spilled) + len(rejected) == 30
        assert by_code and spilled and rejected
        # One queue per LLM: Serve bounds max_queued_requests per handle, and the Ingress holds one handle per
        # LLM, whole answers and streams alike (a handle per kind of answer would double the queue). Streams
        # went to both before this burst (the tests above), whole answers in it: still one handle each.
        for deployment in ("llm-code", "llm-general"):
            handles = _wait(lambda: _router_handles(graph, deployment), f"{deployment}'s handle metrics", 60)
            assert len(handles) == 1, f"{deployment}: {len(handles)} handles in the Ingress"
        assert all(r.headers["x-router-category"] == "general" and r.headers["x-router-fallback"] == "code"
                   and r.headers["x-router-fallback-cause"] == "overloaded" for r in spilled)
        for r in [*rejected, *(r for r, _ in named)]:
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
        after = httpx.get(f"{graph.base_url}/stats", timeout=10).json()
        assert after["spillovers"] - before["spillovers"] >= len(spilled)
        assert (after["errors"]["by_status"].get("429", 0) - before["errors"]["by_status"].get("429", 0)
                == len(rejected) + len(named))
    finally:
        _deploy(graph, shipped, tmp_path / "shipped.yaml",
                lambda: _serve_option(graph, "llm-code", "max_queued_requests") == 64)


# ---- with timeouts an error path reaches in seconds (applied live, put back at the end) --------------------

@pytest.fixture(scope="module")
def short_timeouts(graph, tmp_path_factory):
    shipped = yaml.safe_load(SERVE_CONFIG.read_text())
    short = copy.deepcopy(shipped)
    routing_block(short["applications"][0]).update(request_timeout_s=REQUEST_TIMEOUT_S)
    folder = tmp_path_factory.mktemp("timeouts")
    _deploy(graph, short, folder / "short.yaml", _routing_version(graph, short))
    yield
    _deploy(graph, shipped, folder / "shipped.yaml", _routing_version(graph, shipped))


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
