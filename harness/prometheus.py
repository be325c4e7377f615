"""A real Prometheus (Debian's ``prometheus`` package) scraping a Ray cluster, on loopback.

Ray writes a ``prometheus.yml`` for each cluster (``$RAY_TMPDIR/session_latest/metrics/prometheus/``) that
discovers every node's metrics port through a file Ray keeps up to date as nodes come and go. This starts
Prometheus on exactly that file, with a shorter scrape interval so a test sees its traffic within seconds,
and evaluates queries through Prometheus's HTTP API. The command for people is in docs/observability.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

PORT = 9090
# Grafana's variables, as the dashboard's "All" and a window wide enough for a whole test's traffic.
GRAFANA_VARIABLES = {"$route": ".+", "$deployment": ".+", "$__rate_interval": "10m"}


def ray_prometheus_config(ray_tmp: str | Path) -> Path:
    return Path(ray_tmp) / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series (``[{"metric": {...}, "value": [t, v]}, ...]``); raises on a bad query."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
        return body["data"]["result"]

    def targets_up(self) -> int:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=30).json()
        return sum(t["health"] == "up" for t in r["data"]["activeTargets"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start(ray_tmp: str | Path, scrape_interval: str = "2s", port: int = PORT, timeout_s: float = 60) -> Prometheus:
    beside = Path(sys.executable).parent / "prometheus"  # where scripts/setup.sh puts Debian's binary
    binary = str(beside) if beside.exists() else shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("no prometheus binary: run scripts/setup.sh, or put prometheus 2.x on the PATH")
    config = yaml.safe_load(ray_prometheus_config(ray_tmp).read_text())
    config["global"] |= {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
    data_dir = tempfile.mkdtemp(prefix="prom")
    path = Path(data_dir) / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([binary, f"--config.file={path}", f"--storage.tsdb.path={data_dir}/data",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prometheus(process, f"http://127.0.0.1:{port}", data_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                return prom
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            prom.stop()
            raise RuntimeError(f"prometheus did not start (exit {process.poll()})")
        time.sleep(0.5)


def grafana_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, query) for every target of the dashboard, Grafana's variables filled in."""
    pattern = re.compile("|".join(re.escape(k) for k in GRAFANA_VARIABLES))
    return [(panel["title"], pattern.sub(lambda m: GRAFANA_VARIABLES[m[0]], target["expr"]))
            for panel in dashboard["panels"] for target in panel.get("targets", [])]
