"""A multi-node Ray cluster on this machine that mirrors cluster.yaml, all of it on loopback.

    python -m harness.local_cluster up      # head node + Ray's autoscaler; waits for cluster.yaml's min_workers
    python -m harness.local_cluster status  # `ray status` of it
    python -m harness.local_cluster down

Ray's fake multi-node provider (``ray.autoscaler._private.fake_multi_node``) starts and stops worker nodes as
local processes: real raylets, object stores and resources, only the machine is shared. The node types are
cluster.yaml's, with two changes a machine without GPUs needs: each type's ``GPU`` becomes the stand-in
resource that serve_config.yaml's ``cpu_fallback.gpu_stand_in`` names, and idle nodes go after a minute
instead of ten. Three settings keep every node on 127.0.0.1 (by default Ray picks the machine's network
address): the head's ``--node-ip-address``, the provider's ``gcs_address``, and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the head's environment, which the autoscaler inherits.

``serve deploy serve_config.yaml`` then places the replicas as on the GPU cluster (docs/cluster.md).
The tests and the multi-node benchmark use ``LocalCluster`` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from harness.local_serve import dashboard_json, serve_deploy
from harness.prometheus import ray_prometheus_config
from serve_app.config.file import load_app_config

ROOT = Path(__file__).resolve().parents[1]
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
LOOPBACK = "127.0.0.1"
HTTP_PORT = 8000
GCS_PORT = 6390  # not Ray's default 6379, so a stray single-node cluster cannot be joined by mistake
DASHBOARD_PORT = 8265
STATE = Path("/tmp/semantic-router-local-cluster.json")  # where `up` leaves what `status` and `down` need
# A worker node's object store: the fake nodes share this machine's /dev/shm.
OBJECT_STORE_BYTES = 512 * 1024 * 1024


def stand_in_resource(serve_config: Path) -> str:
    """The resource serve_config.yaml places by on a cluster without GPUs (``cpu_fallback.gpu_stand_in``)."""
    name = load_app_config(serve_config).router.cpu_fallback.gpu_stand_in
    if not name:
        raise SystemExit(f"{serve_config}: set args.cpu_fallback.gpu_stand_in to place replicas by node type")
    return name


def autoscaling_config(cluster: dict[str, Any], stand_in: str, idle_timeout_minutes: float = 1.0) -> dict[str, Any]:
    """cluster.yaml's node types for Ray's fake multi-node provider on loopback."""

    def resources(declared: dict[str, Any]) -> dict[str, Any]:
        res = {k: v for k, v in declared.items() if k != "GPU"}
        if declared.get("GPU"):
            res[stand_in] = declared["GPU"]
        return res

    types: dict[str, Any] = {}
    for name, node_type in cluster["available_node_types"].items():
        if name == cluster["head_node_type"]:
            types[HEAD_TYPE] = {"resources": resources(node_type["resources"]), "node_config": {}, "max_workers": 0}
        else:
            types[name] = {"resources": resources(node_type["resources"]) | {"object_store_memory": OBJECT_STORE_BYTES},
                           "node_config": {}, "min_workers": node_type.get("min_workers", 0),
                           "max_workers": node_type.get("max_workers", cluster["max_workers"])}
    return {
        "cluster_name": f"{cluster['cluster_name']}-local",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": f"{LOOPBACK}:{GCS_PORT}", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {}, "docker": {}, "available_node_types": types, "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass(frozen=True)
class LocalCluster:
    ray_tmp: str  # the cluster's private RAY_TMPDIR: every process of it has this in its environment
    config_path: str  # the autoscaler's config

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{DASHBOARD_PORT}"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{HTTP_PORT}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (`serve deploy`, `ray status`)."""
        # Ray 2.60 turns token auth on for a new cluster: its clients send the token (~/.ray/auth_token).
        return {**os.environ, "RAY_TMPDIR": self.ray_tmp, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def processes(self) -> list[psutil.Process]:
        return _processes_with(lambda env: env.get("RAY_TMPDIR") == self.ray_tmp)

    def node_processes(self, node_id: str) -> list[psutil.Process]:
        """Every process of one worker node: its raylet, agents and workers (the fake provider tags them)."""
        return _processes_with(lambda env: env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING") == node_id)

    def kill_node(self, node_id: str) -> int:
        """SIGKILL a worker node, as a machine that dies: no process of it gets to say goodbye."""
        procs = self.node_processes(node_id)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        return len(procs)

    def deployments(self) -> dict[str, Any]:
        """Serve's view of the router's deployments (the dashboard's REST API): replicas with node and state."""
        return dashboard_json(self.dashboard_url, "/api/serve/applications/")["applications"]["router"]["deployments"]

    def running_on(self) -> dict[str, set[str]]:
        """The nodes each deployment has a RUNNING replica on."""
        return {name: {r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING"}
                for name, d in self.deployments().items()}

    def alive_workers(self) -> list[dict[str, Any]]:
        """The worker nodes alive now, as the GCS sees them: node_id, ip, resources."""
        nodes = dashboard_json(self.dashboard_url, "/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]
        return [{"node_id": n["node_id"], "ip": n["node_ip"], "resources": n["resources_total"]}
                for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"]]

    def deploy(self, serve_config: Path) -> subprocess.CompletedProcess[str]:
        """``serve deploy`` a config file onto this cluster, as a user does."""
        return serve_deploy(serve_config, self.dashboard_url)

    def ray_status(self) -> str:
        ray = Path(sys.executable).parent / "ray"
        return subprocess.run([str(ray), "status", f"--address={self.address}"], env=self.env, capture_output=True,
                              text=True, timeout=60).stdout


def start(cluster_yaml: Path = ROOT / "cluster.yaml", serve_config: Path = ROOT / "serve_config.yaml",
          idle_timeout_minutes: float = 1.0, timeout_s: float = 180) -> LocalCluster:
    """Start the head and the autoscaler; return once cluster.yaml's min_workers have joined."""
    import tempfile

    cluster = yaml.safe_load(cluster_yaml.read_text())
    config = autoscaling_config(cluster, stand_in_resource(serve_config), idle_timeout_minutes)
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    config_path = Path(ray_tmp) / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    head = config["available_node_types"][HEAD_TYPE]["resources"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_FAKE_CLUSTER": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_metrics_report_interval_ms": "1000"}
    ray = Path(sys.executable).parent / "ray"
    cmd = [str(ray), "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={GCS_PORT}",
           f"--autoscaling-config={config_path}", f"--num-cpus={head.get('CPU', 1)}", "--num-gpus=0",
           f"--dashboard-host={LOOPBACK}", f"--dashboard-port={DASHBOARD_PORT}", f"--temp-dir={ray_tmp}",
           f"--object-store-memory={OBJECT_STORE_BYTES}"]
    extra = {k: v for k, v in head.items() if k not in ("CPU", "GPU")}
    if extra:
        cmd.append(f"--resources={json.dumps(extra)}")
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=120)
    local = LocalCluster(ray_tmp, str(config_path))
    STATE.write_text(json.dumps({"ray_tmp": ray_tmp, "config_path": str(config_path)}))
    # Serve's proxy on the head only, on loopback, before any deploy: serve_config.yaml's http_options (all
    # interfaces, for a real head) are then left as they are, with a warning from `serve deploy`.
    serve = Path(sys.executable).parent / "serve"
    subprocess.run([str(serve), "start", "--http-host", LOOPBACK, "--http-port", str(HTTP_PORT), "--proxy-location",
                    "HeadOnly"], env=local.env, check=True, capture_output=True, text=True, timeout=120)
    wanted = sum(t.get("min_workers", 0) for t in config["available_node_types"].values())
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if len(local.alive_workers()) >= wanted:
                return local
        except httpx.HTTPError:  # the dashboard is still starting
            pass
        if time.monotonic() > deadline:
            stop(local)
            raise RuntimeError(f"{wanted} worker node(s) did not join within {timeout_s:.0f}s")
        time.sleep(2)


def stop(cluster: LocalCluster) -> None:
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "stop", "--force"], env=cluster.env, capture_output=True, timeout=120)
    for p in cluster.processes():  # fake worker nodes are children of the autoscaler, not of `ray start`
        try:
            p.kill()
        except psutil.Error:
            pass
    STATE.unlink(missing_ok=True)


def _processes_with(match) -> list[psutil.Process]:
    found = {}
    for proc in psutil.process_iter():
        try:
            if match(proc.environ()):
                found[proc.pid] = proc
        except psutil.Error:
            pass
    return list(found.values())


def _saved() -> LocalCluster:
    if not STATE.exists():
        raise SystemExit("no local cluster is running (python -m harness.local_cluster up)")
    return LocalCluster(**json.loads(STATE.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.local_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "status", "down"])
    parser.add_argument("--cluster", type=Path, default=ROOT / "cluster.yaml")
    parser.add_argument("--serve-config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--idle-timeout-minutes", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "up":
        cluster = start(args.cluster, args.serve_config, args.idle_timeout_minutes)
        print(f"local cluster up: head {cluster.address}, dashboard {cluster.dashboard_url}, "
              f"RAY_TMPDIR {cluster.ray_tmp}")
        print(f"deploy: RAY_AUTH_MODE=token serve deploy -a {cluster.dashboard_url} serve_config.yaml")
        print(f"prometheus: .venv/bin/prometheus --config.file={ray_prometheus_config(cluster.ray_tmp)} "
              "--web.listen-address=127.0.0.1:9090 "
              "--storage.tsdb.path=/tmp/prometheus-local-cluster")
    elif args.command == "status":
        print(_saved().ray_status())
    else:
        stop(_saved())
        print("local cluster down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
