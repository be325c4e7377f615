"""Benchmark the CPU default graph: start-up, memory, routing overhead, first token and throughput.

    .venv/bin/python bench/bench_router.py                 # starts `serve run serve_config.yaml` itself
    .venv/bin/python bench/bench_router.py --url http://127.0.0.1:8000   # an already running router

Writes bench/results/cpu_default.json. Single observations on a shared machine: orders of magnitude.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root holds tests/
from harness.local_serve import serve_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERIES = {"code": "Write a Python function to sort a list", "math": "Solve the integral of x^2 dx",
           "general": "What is the capital of France?"}
MAX_TOKENS = 64


def stream_once(client: openai.OpenAI, text: str) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - started
    return {"ttft_s": first, "total_s": total, "tokens": tokens}


def used_memory_gib() -> float:
    return (psutil.virtual_memory().total - psutil.virtual_memory().available) / 2**30


def measure(base_url: str, rounds: int) -> dict:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    for text in QUERIES.values():  # warm every engine once
        stream_once(client, text)
    single = {}
    for route, text in QUERIES.items():
        runs = [stream_once(client, text) for _ in range(rounds)]
        single[route] = {
            "ttft_ms_p50": round(statistics.median(r["ttft_s"] for r in runs) * 1000, 1),
            "decode_tok_s": round(statistics.median(r["tokens"] / (r["total_s"] - r["ttft_s"]) for r in runs), 1),
        }
    concurrent_results = {}
    for width in (3, 9):
        texts = list(QUERIES.values()) * (width // 3)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(width) as pool:
            runs = list(pool.map(lambda t: stream_once(client, t), texts))
        wall = time.perf_counter() - started
        concurrent_results[f"{width}_streams_mixed_routes"] = {
            "aggregate_tok_s": round(sum(r["tokens"] for r in runs) / wall, 1),
            "ttft_ms_p50": round(statistics.median(r["ttft_s"] for r in runs) * 1000, 1),
        }
    stats = httpx.get(f"{base_url}/stats", timeout=10).json()
    return {"single_stream": single, "concurrent": concurrent_results, "classifier_ms": stats["classifier_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark a router that is already running")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_default.json"))
    args = parser.parse_args()

    result = {"machine": {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                          "python": platform.python_version()},
              "max_tokens": MAX_TOKENS, "date": time.strftime("%Y-%m-%d")}
    baseline = used_memory_gib()
    if args.url:
        ctx = contextlib.nullcontext((args.url, None))
    else:
        ctx = serve_run(ROOT / "serve_config.yaml")
    with ctx as running:
        url, startup_s = running[:2]
        result["startup_s"] = None if startup_s is None else round(startup_s, 1)
        result["memory_gib_whole_graph"] = None if args.url else round(used_memory_gib() - baseline, 1)
        result.update(measure(url, args.rounds))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
