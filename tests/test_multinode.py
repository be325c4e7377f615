"""The graph spread over a real multi-node Ray cluster on this machine (harness/local_cluster.py): replicas
placed by cluster.yaml's node types, and a worker node lost under load, healed by the autoscaler.

The nodes are real raylets on 127.0.0.1; only the GPU is a stand-in (serve_config.yaml's
cpu_fallback.gpu_stand_in, declared by the LLM node type), and the engines are vLLM's CPU build.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from harness import prometheus
from harness.node_loss import CLIENT_TIMEOUT_S, node_loss
from tests.conftest import BASE, ROOT

pytestmark = pytest.mark.cluster

DASHBOARD = ROOT / "docs" / "grafana" / "semantic-router.json"
# Panels this module's traffic may leave without series, and why.
MAY_BE_EMPTY = {
    "Load spillovers by route → to_route": "no queue fills here: tests/test_error_paths.py fills one",
    "429 rejections by route (every candidate full)": "no queue fills here: tests/test_error_paths.py fills one",
    "Replica exceptions/s by deployment": "the router answers failures itself; a call cut by the node loss may count",
}

ON_LLM_NODES = ("Classifier", "llm-code", "llm-math", "llm-general")
ON_HEAD = ("Ingress", "StatsAggregator")


@pytest.fixture(scope="module", autouse=True)
def scraped(multinode):
    """Prometheus from Debian's package on Ray's own prometheus.yml, scraping every node from the start."""
    prom = prometheus.start(multinode.ray_tmp)
    yield prom
    prom.stop()


def test_replicas_land_on_the_node_types_of_cluster_yaml(multinode):
    workers = multinode.alive_workers()
    assert len(workers) == 1 and workers[0]["resources"].get("local_gpu") == 1  # cluster.yaml: gpu, min_workers 1
    worker_ids = {w["node_id"] for w in workers}
    placed = multinode.running_on()
    for name in ON_LLM_NODES:
        assert placed[name] and placed[name] <= worker_ids, f"{name} on {placed[name]}, not on the LLM node"
    for name in ON_HEAD:
        assert placed[name] and not placed[name] & worker_ids, f"{name} left the head"
    assert "local_gpu" in multinode.ray_status()  # the stand-in, as `ray status` shows it
    assert all(n["ip"] == "127.0.0.1" for n in workers)
    r = httpx.post(f"{BASE}/v1/chat/completions", timeout=120, json={
        "model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": "Solve 2x + 3 = 11"}]})
    assert r.status_code == 200 and r.headers["x-router-category"] == "math"


def test_a_node_lost_under_load_costs_no_hung_request_and_heals_itself(multinode):
    report = asyncio.run(node_loss(multinode, BASE))
    counts = report.counts()
    print("node loss:", report.as_json())
    assert report.processes_killed > 0
    before = [o for o in report.outcomes if o.started + o.seconds < report.kill_at_s]
    assert before and all(o.status == 200 for o in before)  # the graph answered before the loss
    assert counts["hung"] == 0, f"requests waited past {CLIENT_TIMEOUT_S}s"
    assert counts["other_status"] == 0, [o for o in report.outcomes if o.status not in (200, 503)]
    assert counts["503"] > 0 and counts["503_without_retry_after"] == 0  # no model up: 503 + Retry-After
    # /health named the deployments that lost their replicas.
    lost = {name for name, state in report.health_during["deployments"].items() if state != "HEALTHY"}
    assert lost and lost <= set(ON_LLM_NODES), report.health_during
    # The autoscaler replaced the node and Serve put the replicas back, with no one touching anything.
    assert report.healthy_after_s is not None, multinode.ray_status()
    assert report.new_node is not None and report.new_node != report.killed_node
    assert set().union(*(multinode.running_on()[n] for n in ON_LLM_NODES)) == {report.new_node}
    healed = [o for o in report.outcomes if o.started > report.kill_at_s + report.healthy_after_s]
    assert healed and all(o.status == 200 for o in healed)


def test_every_grafana_query_returns_series_from_a_real_prometheus(scraped):
    # Every node's metrics port, discovered through the file Ray rewrites as nodes come and go.
    assert scraped.targets_up() >= 2
    time.sleep(15)  # a few scrapes after the last traffic, so every rate() has two samples
    queries = prometheus.grafana_queries(json.loads(DASHBOARD.read_text()))
    empty = sorted({title for title, expr in queries if not scraped.query(expr)})
    assert set(empty) <= set(MAY_BE_EMPTY), f"panels without data: {empty}"
    # vLLM's gauges are in Ray's export while an engine works (and gone when it idles: the dashboard reads
    # them with last_over_time): every engine that answered has its series, the replacement node's included.
    engines = scraped.query("count by (ReplicaId) (last_over_time(ray_vllm_num_requests_running[10m]))")
    assert len(engines) >= 3, engines
