from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8000"
SERVE_CONFIG = ROOT / "serve_config.yaml"
EXTERNAL_EXAMPLE = ROOT / "examples" / "external.yaml"
DEV_SET = ROOT / "data" / "dev.jsonl"

# The mixed graph (examples/external.yaml): its external endpoint, and the keys it is started with.
UPSTREAM = "http://127.0.0.1:9100"
UPSTREAM_KEY = "sk-upstream-test-5c1e"
ROUTER_KEY = "sk-router-test-7d1f0c9a"
OTHER_ROUTER_KEY = "sk-router-test-other-2b8e"

# One graph at a time answers on port 8000: starting one stops the other. Tests of the mixed graph run
# first (pytest_collection_modifyitems), so the shared graph starts once, after them.
_graphs: dict[str, contextlib.ExitStack] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The mixed graph first, then the HAProxy graph, the multi-node cluster last: each takes port 8000 from the
    # graph before it, and a session graph once stopped is not started again.
    def order(item: pytest.Item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        for rank, fixture in enumerate(("mixed_graph", "haproxy_graph")):
            if fixture in fixtures:
                return rank
        return 3 if "multinode" in fixtures else 2

    items.sort(key=order)


def _serve(name: str, path: Path, **kwargs):
    from harness.local_serve import LocalServe, StartupError, serve_run

    if os.environ.get("ROUTER_TEST_RUNNING_GRAPH") == name:
        # While developing: test against a graph you started yourself (only the base URL is known).
        return LocalServe(BASE, 0.0, "http://127.0.0.1:8265", "")
    for other in list(_graphs):
        _graphs.pop(other).close()
    stack = contextlib.ExitStack()
    try:
        running = stack.enter_context(serve_run(path, BASE, **kwargs))
    except StartupError as exc:
        stack.close()
        pytest.fail(str(exc))
    _graphs[name] = stack
    print(f"\n{name} graph healthy after {running.startup_s:.0f}s")
    return running


def _stop(name: str) -> None:
    if name in _graphs:
        _graphs.pop(name).close()


@pytest.fixture(scope="session")
def multinode():
    """The local multi-node cluster (harness/local_cluster.py, cluster.yaml's node types on loopback) with
    ``serve deploy serve_config.yaml`` on it, healthy. Started after every single-node graph has stopped."""
    from harness.local_cluster import start, stop
    from harness.local_serve import StartupError, wait_healthy

    for other in list(_graphs):
        _stop(other)
    cluster = start(ROOT / "cluster.yaml", SERVE_CONFIG, idle_timeout_minutes=0.5)
    try:
        deployed = cluster.deploy(SERVE_CONFIG)
        assert deployed.returncode == 0, deployed.stderr
        try:
            wait_healthy(cluster.base_url, 900)
        except StartupError as exc:
            pytest.fail(f"{exc} on the local cluster:\n{cluster.ray_status()}")
        yield cluster
    finally:
        stop(cluster)


@pytest.fixture(scope="session")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="session")
def router_args(serve_config) -> dict:
    """The application's args: the serving graph (RouterConfig)."""
    return serve_config["applications"][0]["args"]


@pytest.fixture(scope="session")
def routing_args(serve_config) -> dict:
    """The routing block: the user_config the Ingress and Classifier deployments share (RoutingConfig)."""
    from serve_app.config.file import routing_block

    return routing_block(serve_config["applications"][0])


@pytest.fixture(scope="session")
def app_config(serve_config):
    from serve_app.config.file import app_config

    return app_config(serve_config)


@pytest.fixture(scope="session")
def encoder(app_config):
    """The shipped embedding model as the config loads it (backend, max_seq_length), once for every test."""
    from serve_app.routing.encoder import load_encoder

    c = app_config.router.classifier
    return load_encoder(c.model, c.backend, c.max_seq_length, threads=c.threads)


@pytest.fixture(scope="session")
def graph():
    """``serve run serve_config.yaml``, exactly as a user starts it, shared by every end-to-end module.

    Modules that change it (a live routing update, a killed replica) put it back as they found it.
    """
    yield _serve("shared", SERVE_CONFIG, timeout_s=1200)
    _stop("shared")


class Upstream:
    """The external endpoint of examples/external.yaml: harness/openai_stub.py, a real server on loopback."""

    url = UPSTREAM

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-m", "harness.openai_stub", "--port", UPSTREAM.rsplit(":")[-1],
                                        "--model", "coder-large", "--api-key", UPSTREAM_KEY], cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{UPSTREAM}/v1/models", timeout=2)
                return
            except httpx.TransportError:
                assert self.server.poll() is None and time.monotonic() < deadline, "the stub endpoint did not start"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
            self.server = None

    def seen(self) -> dict:
        """What it was sent: request count, distinct connections, the recent requests."""
        return httpx.get(f"{UPSTREAM}/stub/requests", timeout=10).json()

    def mode(self, **mode) -> None:
        """fail_status: answer everything with it; delay_s: wait before answering; reset: forget what was seen."""
        httpx.post(f"{UPSTREAM}/stub/mode", json=mode, timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def upstream():
    endpoint = Upstream()
    endpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def mixed_graph(upstream, tmp_path_factory):
    """``serve run examples/external.yaml`` with API keys: an in-cluster vLLM model and an external one.

    As an operator starts it: keys in the environment of `serve run`. Two changes to the example: no tool
    calling on the CPU fallback, so the 400 for tools sent to a model without it can be seen for real, and the
    classifier in a deployment of its own (classifier.placement).
    """
    config = yaml.safe_load(EXTERNAL_EXAMPLE.read_text())
    config["applications"][0]["args"]["cpu_fallback"]["tool_calling"] = None
    # The shared graph runs the encoder in its Ingress (placement auto on a CPU): this one runs the Classifier
    # deployment, so both placements serve for real.
    config["applications"][0]["args"].setdefault("classifier", {})["placement"] = "deployment"
    path = tmp_path_factory.mktemp("mixed") / "external.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    yield _serve("mixed", path, env={"ROUTER_API_KEYS": f"{ROUTER_KEY},{OTHER_ROUTER_KEY}",
                                     "CODER_API_KEY": UPSTREAM_KEY})
    _stop("mixed")


@pytest.fixture(scope="session")
def haproxy_graph(tmp_path_factory):
    """serve_config.yaml's router behind Ray Serve's HAProxy ingress (haproxy_env() in the environment of `serve
    run`), its LLMs one instant stub endpoint (harness/openai_stub.py): the HTTP path alone."""
    from harness.local_serve import haproxy_env
    from harness.openai_stub import config_with_stub_llms

    port = "9102"
    stub = subprocess.Popen([sys.executable, "-m", "harness.openai_stub", "--port", port, "--model", "stub"], cwd=ROOT)
    try:
        config = yaml.safe_load(SERVE_CONFIG.read_text())
        names = [llm["name"] for llm in config["applications"][0]["args"]["llms"]]
        config = config_with_stub_llms(config, {name: f"http://127.0.0.1:{port}/v1" for name in names})
        path = tmp_path_factory.mktemp("haproxy") / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        yield _serve("haproxy", path, env=haproxy_env(), timeout_s=600)
        _stop("haproxy")
    finally:
        stub.terminate()
        stub.wait(10)
