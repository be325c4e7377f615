"""Run ``serve run CONFIG`` as a child process on a private local Ray cluster, and wait until healthy.

Used by the end-to-end tests and the benchmarks, so both measure exactly what a user starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


class StartupError(RuntimeError):
    pass


@contextmanager
def serve_run(config: str | Path, base_url: str = "http://127.0.0.1:8000",
              timeout_s: float = 1200) -> Iterator[tuple[str, float]]:
    """Yield (base_url, seconds until /health answered 200); stop the cluster on exit."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    log_path = Path(ray_tmp) / "serve-run.log"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
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
        yield base_url, time.monotonic() - started
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a background `serve run` ignores SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
