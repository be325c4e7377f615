"""What the embedding cache saves on conversation and agent traffic: our router with `classifier.cache_size` 0
and with the shipped size, the same conversations replayed through each.

Traffic: every conversation of data/conversations.jsonl, sent the way a client sends it: one request at each
point where the model is called (after each user turn, and after each tool result of an agent's loop), each
carrying the whole thread so far. A simulated client takes a conversation and sends its requests in order;
the next conversation goes to whichever client is free. One client first (the conversations of one part), then
8 at once (the others), so no conversation is sent twice to a router.

Measured per run: the router's CPU per request (every process of the private Ray cluster, as in
bench_capacity.py), latency p50/p99 and, from /stats, the classification time; and the route each request took,
which must be the same with and without the cache. The LLMs are bench_capacity's instant stubs. From the
repository root (one cluster at a time):

    flock /tmp/cluster.lock .venv/bin/python bench/bench_threads.py

Writes bench/results/threads.json and prints a table. Loopback only, bounded counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_capacity import MAX_TOKENS, ROOT, cpu_seconds, facts, load_queries, our_router, percentile, run_users, stubs

from serve_app.config.file import app_config, application_index, load_yaml

CONVERSATIONS = ROOT / "data" / "conversations.jsonl"
WARMUP = 32  # single requests of the development set before the first level: no conversation's text


def requests_of(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The thread at each point a client calls the model: after a user turn or a tool result."""
    return [messages[:i + 1] for i, m in enumerate(messages) if m["role"] in ("user", "tool")]


def load_conversations(path: Path, seed: int = 0) -> list[dict[str, Any]]:
    conversations = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(conversations)  # kinds mixed, the same order for every run
    return conversations


async def replay(url: str, conversations: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"user": [], "tool": []}  # by what the thread ends with
    routes: dict[str, list[str]] = {}
    errors: Counter[str] = Counter()
    queue = iter(conversations)

    async def user(client: httpx.AsyncClient) -> None:
        for conversation in queue:
            taken = routes.setdefault(conversation["id"], [])
            for thread in requests_of(conversation["messages"]):
                started = time.perf_counter()
                r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": thread,
                                                                     "max_tokens": MAX_TOKENS})
                if r.status_code != 200:
                    errors[f"HTTP {r.status_code}"] += 1
                    continue
                latencies[thread[-1]["role"]].append(time.perf_counter() - started)
                taken.append(r.headers["x-router-category"])

    wall = await run_users(url, clients, user)
    done = sum(len(v) for v in latencies.values())
    return {"clients": clients, "conversations": len(conversations), "ok": done, "errors": sum(errors.values()),
            "error_kinds": dict(errors), "wall_s": round(wall, 2), "req_s": round(done / wall, 1),
            "p50_ms": percentile(latencies["user"] + latencies["tool"], 50),
            "p99_ms": percentile(latencies["user"] + latencies["tool"], 99),
            "after_user_turn_p50_ms": percentile(latencies["user"], 50),
            "after_tool_result_p50_ms": percentile(latencies["tool"], 50), "routes": routes}


def run(cache_size: int, backends: dict, scratch: Path, parts: list[list[dict[str, Any]]],
        levels: list[int]) -> dict[str, Any]:
    print(f"cache_size {cache_size}: starting", flush=True)
    with our_router(backends, scratch, cache_size=cache_size) as (url, procs):
        warmup = [{"id": f"warmup/{i}", "messages": [{"role": "user", "content": q.text}]}
                  for i, q in enumerate(load_queries(ROOT / "data" / "dev.jsonl")[-WARMUP:])]
        asyncio.run(replay(url, warmup, 8))
        result: dict[str, Any] = {"levels": []}
        for clients, conversations in zip(levels, parts, strict=True):
            router = procs()
            before = cpu_seconds(router)
            level = asyncio.run(replay(url, conversations, clients))
            level["router_cpu_ms_per_req"] = round((cpu_seconds(router) - before) * 1000 / max(level["ok"], 1), 1)
            result["levels"].append(level)
            print(f"  {clients} clients: {level['ok']} requests, {level['req_s']} req/s, p50 {level['p50_ms']} ms, "
                  f"CPU {level['router_cpu_ms_per_req']} ms/request, errors {level['errors']}", flush=True)
        result["classifier_ms"] = httpx.get(f"{url}/stats", timeout=10).json().get("classifier_ms")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--first", type=int, default=80, help="conversations of the first level; the rest go to the "
                        "others, split evenly")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "threads.json")
    args = parser.parse_args()

    conversations = load_conversations(CONVERSATIONS)
    rest = conversations[args.first:]
    share = -(-len(rest) // max(len(args.clients) - 1, 1))
    parts = [conversations[:args.first]] + [rest[i:i + share] for i in range(0, len(rest), share)]
    shipped = load_yaml(ROOT / "serve_config.yaml")
    app = app_config(shipped)
    names = [llm["name"] for llm in shipped["applications"][application_index(shipped)]["args"]["llms"]]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": facts(),
        "settings": {"clients": args.clients, "conversations": [len(p) for p in parts],
                     "requests": sum(len(requests_of(c["messages"])) for c in conversations),
                     "shipped_cache_size": app.router.classifier.cache_size, "max_tokens": MAX_TOKENS,
                     "backends": "harness/openai_stub.py, one process per LLM entry, loopback"}}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp, stubs(names, Path(tmp)) as backends:
        for size in (0, app.router.classifier.cache_size):
            result[f"cache_{size}"] = run(size, backends, Path(tmp), parts[:len(args.clients)], args.clients)
    off, on = result["cache_0"], result[f"cache_{app.router.classifier.cache_size}"]
    changed = [cid for a, b in zip(off["levels"], on["levels"], strict=True) for cid in a["routes"]
               if a["routes"][cid] != b["routes"].get(cid)]
    result["same_routes"] = not changed
    result["changed_routes"] = changed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for a, b in zip(off["levels"], on["levels"], strict=True):
        print(f"{a['clients']} clients: CPU ms/request {a['router_cpu_ms_per_req']} -> {b['router_cpu_ms_per_req']}, "
              f"p50 {a['p50_ms']} -> {b['p50_ms']} ms, req/s {a['req_s']} -> {b['req_s']}")
    print(f"classifier_ms {off['classifier_ms']} -> {on['classifier_ms']}; same routes: {not changed}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
