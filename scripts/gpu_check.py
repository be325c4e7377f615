"""Check a router deployed on GPUs: GPU memory per model, and time to first token per route.

    python scripts/gpu_check.py --url http://localhost:8000          # on a GPU node: its own nvidia-smi
    python scripts/gpu_check.py --url http://localhost:8000 --ray    # on the head: every GPU node, via Ray

Memory comes from ``nvidia-smi --query-compute-apps`` (each process is traced back to the Serve replica that
started it) and, under kvcached, from each replica's KV-cache segment in /dev/shm (used / limit). Inside
containers nvidia-smi often cannot see processes; the kvcached segments and the per-GPU totals still show.
Time to first token is measured through the router with streaming requests naming each route explicitly,
plus one classified route (``model: auto``), after one warm-up request each.

Not run in CI: it needs a deployed router and NVIDIA GPUs. Standard library only (and Ray for --ray).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

SHM = Path("/dev/shm")
KVCACHED_PREFIX = "kvcached_"
# kvcached's per-segment record (kvcached.cli.utils.MemInfoStruct): total, used, prealloc bytes as int64.
_SEGMENT = struct.Struct("=3q")
_REPLICA = re.compile(r"ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[\w.-]+?)(?:\.|\s|$)")
PROMPTS = {
    "code": "Write a Python function to sort a list",
    "math": "Solve the integral of x^2 dx",
    "general": "What is the capital of France?",
}
MIB = 1 << 20


# ---- GPU memory on this node ------------------------------------------------------------------------------

def parse_csv(text: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --format=csv,noheader,nounits`` output."""
    return [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]


def deployment_of(cmdline: str) -> str | None:
    """The Serve deployment named in a Ray worker's process title, e.g. ``ray::ServeReplica:router:llm-code``."""
    match = _REPLICA.search(cmdline)
    return match["deployment"] if match else None


def parse_segment(data: bytes) -> tuple[int, int] | None:
    """(limit, used) bytes of a kvcached segment, or None for a file of another shape."""
    if len(data) != _SEGMENT.size:
        return None
    total, used, _prealloc = _SEGMENT.unpack(data)
    return total, used


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        # The command name may hold spaces and parentheses: the fields after its closing one are fixed.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def owner(pid: int) -> str | None:
    """The deployment whose replica started ``pid`` (the replica itself or vLLM's engine-core child)."""
    while pid > 1:
        if name := deployment_of(_cmdline(pid)):
            return name
        pid = _parent(pid)
    return None


def _smi(query: str, fields: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", f"--query-{query}={fields}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return parse_csv(out)


def node_report() -> dict[str, Any]:
    """GPUs, GPU memory per deployment, and kvcached segments on this machine."""
    gpus = [{"index": i, "uuid": u, "name": n, "used_mib": int(used), "total_mib": int(total)}
            for i, u, n, used, total in _smi("gpu", "index,uuid,name,memory.used,memory.total")]
    processes = []
    for uuid, pid, used in _smi("compute-apps", "gpu_uuid,pid,used_memory"):
        processes.append({"gpu": uuid, "pid": int(pid), "used_mib": int(used) if used.isdigit() else None,
                          "deployment": owner(int(pid))})
    segments = []
    for path in sorted(SHM.glob(f"{KVCACHED_PREFIX}*")):
        try:
            parsed = parse_segment(path.read_bytes()) if path.stat().st_size == _SEGMENT.size else None
        except OSError:
            parsed = None
        if parsed:
            segments.append({"segment": path.name, "limit": parsed[0], "used": parsed[1]})
    return {"node": socket.gethostname(), "gpus": gpus, "processes": processes, "kvcached": segments}


def all_gpu_nodes() -> list[dict[str, Any]]:
    """node_report() on every alive Ray node with a GPU, run there by a zero-CPU task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address="auto", logging_level="ERROR")
    remote = ray.remote(num_cpus=0)(node_report)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
    return ray.get(refs)


def format_memory(report: dict[str, Any]) -> str:
    lines = [f"GPU memory on {report['node']}"]
    for gpu in report["gpus"]:
        lines.append(f"  GPU {gpu['index']} {gpu['name']}: {gpu['used_mib']} / {gpu['total_mib']} MiB used")
        per_deployment: dict[str, int] = {}
        for p in report["processes"]:
            if p["gpu"] == gpu["uuid"] and p["used_mib"] is not None:
                name = p["deployment"] or f"pid {p['pid']} (not a Serve replica)"
                per_deployment[name] = per_deployment.get(name, 0) + p["used_mib"]
        for name, mib in sorted(per_deployment.items()):
            lines.append(f"    {name:<28} {mib:>7} MiB")
        if not report["processes"]:
            lines.append("    (nvidia-smi lists no processes here: containers often hide them)")
    if report["kvcached"]:
        lines.append("  kvcached KV cache per replica (used / limit):")
        for s in report["kvcached"]:
            lines.append(f"    {s['segment']:<40} {s['used'] / MIB:>8.0f} / {s['limit'] / MIB:.0f} MiB")
    return "\n".join(lines)


# ---- time to first token through the router ------------------------------------------------------------------

def first_token(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, str, str]:
    """(seconds to the first streamed content, route, model that answered) for one request."""
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        route, served = response.headers.get("x-router-category", "?"), response.headers.get("x-router-model", "?")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            choices = json.loads(line[5:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                elapsed = time.perf_counter() - started
                for _ in response:  # let the stream finish, so the next request does not queue behind it
                    pass
                return elapsed, route, served
    raise RuntimeError(f"{model}: the stream ended without content")


def routes(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        models = json.load(response)["data"]
    return [m["id"] for m in models if m["id"] != "auto"]


def measure(url: str, runs: int, max_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for model in [*routes(url), "auto"]:
        prompt = PROMPTS.get(model, PROMPTS["code"] if model == "auto" else "Say hello in one sentence.")
        first_token(url, model, prompt, max_tokens)  # warm-up: the first request of a route pays extra
        samples = [first_token(url, model, prompt, max_tokens) for _ in range(runs)]
        times = [s[0] * 1000 for s in samples]
        rows.append({"model": model, "route": samples[-1][1], "served_by": samples[-1][2],
                     "p50_ms": statistics.median(times), "max_ms": max(times)})
    return rows


def format_ttft(rows: list[dict[str, Any]], runs: int, max_tokens: int) -> str:
    lines = [f"Time to first token through the router ({runs} runs each after a warm-up, streaming, "
             f"max_tokens {max_tokens})",
             f"  {'model':<10} {'route':<10} {'p50 ms':>8} {'max ms':>8}  served by"]
    for r in rows:
        lines.append(f"  {r['model']:<10} {r['route']:<10} {r['p50_ms']:>8.0f} {r['max_ms']:>8.0f}  {r['served_by']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ROUTER_URL", "http://localhost:8000"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--ray", action="store_true", help="read GPU memory on every GPU node of the Ray cluster")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    reports = all_gpu_nodes() if args.ray else [node_report()]
    ttft = measure(url, args.runs, args.max_tokens)
    if args.json:
        print(json.dumps({"gpu_memory": reports, "ttft": ttft}, indent=2))
    else:
        print("\n\n".join([*map(format_memory, reports), format_ttft(ttft, args.runs, args.max_tokens)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
