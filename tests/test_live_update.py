"""End to end: retune routing on a running router with `serve deploy`, as an operator does.

A real local Ray cluster started by `serve run`, then `serve deploy` (the CLI, through the dashboard,
with the cluster's auth token) of a changed routing block. Proves that the new routes and thresholds
take effect, that no replica restarts (the vLLM engine least of all), that a stream in flight
finishes, and that a bad routing block is refused while the router serves on with the last good one.

It runs on the graph every end-to-end module shares, and deploys the shipped config again at the end.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness.local_serve import dashboard_json, serve_deploy
from serve_app.config.file import routing_block
from tests.conftest import BASE, SERVE_CONFIG

pytestmark = pytest.mark.cluster

UPDATE_TIMEOUT_S = 180
STREAM_TOKENS = 600  # about half a minute of decoding on a 2-core CPU: long enough to span the update

CREATIVE = {
    "name": "creative", "llm": "general", "description": "Poems, stories and lyrics.",
    "defaults": {"max_tokens": 3, "enforce": ["max_tokens"]},  # route defaults change live too
    "examples": ["Write a haiku about the autumn moon", "Write a haiku about falling leaves",
                 "Compose a sonnet about the sea", "Write a short poem about rain on a window",
                 "Write a limerick about a cat", "Write a poem about the night sky",
                 "Write a free-verse poem about a city at dawn"],
}
HAIKU = "Write a haiku about autumn leaves"
SUM = "What is 15 times 12?"


def _retuned(config: dict) -> dict:
    """A creative route added, and a math threshold no score reaches."""
    config = copy.deepcopy(config)
    routing = routing_block(config["applications"][0])
    routing["routes"].append(copy.deepcopy(CREATIVE))
    next(r for r in routing["routes"] if r["name"] == "math")["threshold"] = 0.95
    return config


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("live")
    before = yaml.safe_load(SERVE_CONFIG.read_text())
    after = _retuned(before)
    typo = copy.deepcopy(after)
    routing_block(typo["applications"][0])["routes"][0]["exampels"] = ["a typo"]
    return {"before": _write(before, folder / "before.yaml"), "after": _write(after, folder / "after.yaml"),
            "typo": _write(typo, folder / "typo.yaml")}


@pytest.fixture(scope="module")
def router(graph, configs):
    yield graph
    # Every module after this one sees the graph as shipped.
    deployed = serve_deploy(configs["before"], graph.dashboard_url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    _wait(lambda: "creative" not in {m["id"] for m in httpx.get(f"{BASE}/v1/models").json()["data"]}, "restored")


def _route(text: str) -> tuple[str, str]:
    r = httpx.post(f"{BASE}/v1/chat/completions", timeout=120,
                   json={"messages": [{"role": "user", "content": text}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    return r.headers["x-router-category"], r.headers["x-router-reason"]


def _application(dashboard: str) -> dict:
    """Serve's own view of the application, from the dashboard's REST API."""
    return dashboard_json(dashboard, "/api/serve/applications/")["applications"]["router"]


def _replicas(dashboard: str) -> dict[str, set[tuple[str, int]]]:
    return {name: {(r["replica_id"], r["pid"]) for r in d["replicas"]}
            for name, d in _application(dashboard)["deployments"].items()}


def _wait(condition, what: str):
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    pytest.fail(f"not {what} after {UPDATE_TIMEOUT_S}s")


class _Stream(threading.Thread):
    """One long streamed completion, read chunk by chunk in the background."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.chunks: list[dict] = []
        self.lines: list[str] = []
        self.first = threading.Event()
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "general", "messages": [{"role": "user", "content": "Tell me a very long story."}],
                "max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        try:
            with httpx.stream("POST", f"{BASE}/v1/chat/completions", json=body, timeout=300) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line)
                        if line != "data: [DONE]":
                            self.chunks.append(json.loads(line[6:]))
                        self.first.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.first.set()


def test_routing_changes_live_without_restarting_a_replica(router, configs):
    assert _route(HAIKU) == ("general", "classified")
    assert _route(SUM) == ("math", "classified")
    assert "creative" not in {m["id"] for m in httpx.get(f"{BASE}/v1/models").json()["data"]}
    before = _replicas(router.dashboard_url)
    assert set(before) == {"Ingress", "StatsAggregator", "llm-code", "llm-math", "llm-general"}
    errors_before = httpx.get(f"{BASE}/stats").json()["errors"]["total"]
    version = httpx.get(f"{BASE}/health").json()["routing"]["version"]

    stream = _Stream()
    stream.start()
    assert stream.first.wait(120) and stream.error is None, stream.error

    deployed = serve_deploy(configs["after"], router.dashboard_url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    deployed_at = time.monotonic()

    _wait(lambda: _route(HAIKU) == ("creative", "classified"), "routing the haiku to the new creative route")
    assert _route(SUM) == ("general", "below_threshold")  # math's new threshold
    long_haiku = httpx.post(f"{BASE}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": HAIKU}], "max_tokens": 50, "ignore_eos": True}).json()
    assert long_haiku["usage"]["completion_tokens"] == 3  # the new route's enforced max_tokens
    models = {m["id"]: m for m in httpx.get(f"{BASE}/v1/models").json()["data"]}
    assert models["creative"]["deployment"] == "llm-general"
    health = httpx.get(f"{BASE}/health").json()
    assert health["routing"]["version"] != version and health["routing"]["refused"] is None

    # The stream that was decoding through the update ran to its end.
    stream.join(300)
    assert stream.error is None, stream.error
    assert stream.finished_at > deployed_at
    assert stream.lines[-1] == "data: [DONE]"
    assert stream.chunks[-1]["usage"]["completion_tokens"] == STREAM_TOKENS

    # Same replicas, same processes: reconfigured in place, the vLLM engine untouched.
    _wait(lambda: _application(router.dashboard_url)["status"] == "RUNNING", "RUNNING")
    assert _replicas(router.dashboard_url) == before
    stats = httpx.get(f"{BASE}/stats").json()
    assert stats["routes"]["creative"] >= 1 and stats["errors"]["total"] == errors_before


def test_a_bad_routing_block_is_refused_and_the_router_serves_on(router, configs):
    before = _replicas(router.dashboard_url)
    version = httpx.get(f"{BASE}/health").json()["routing"]["version"]

    deployed = serve_deploy(configs["typo"], router.dashboard_url)  # Serve cannot see inside a user_config
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    health = _wait(lambda: (h := httpx.get(f"{BASE}/health")).json()["routing"]["refused"] and h, "refusing")
    assert health.status_code == 200
    assert "routes.0.exampels: Extra inputs are not permitted" in health.json()["routing"]["refused"]
    assert health.json()["routing"]["version"] == version
    assert _route(HAIKU) == ("creative", "classified")  # the last good routing
    _wait(lambda: _application(router.dashboard_url)["status"] == "RUNNING", "RUNNING")
    assert _replicas(router.dashboard_url) == before
