"""Streaming through the router against the same vLLM engine called directly, same prompts, same run.

    .venv/bin/python bench/bench_streaming.py            # starts `serve run serve_config.yaml` itself

"Through the router": the official `openai` client, `model: auto`, over HTTP to the Serve proxy, the
Ingress (classification included) and the llm-general replica. "Directly": a Ray Serve handle to the
same llm-general deployment from this process, the shortest way to that engine (no proxy, no Ingress,
no classifier). Both read the same prompts, interleaved round by round so drift hits both alike.
Reports time to first token and decode tokens/s per stream at 1 and 4 concurrent streams.
Writes bench/results/streaming.json. Loopback only; a bounded number of requests.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import openai
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root holds tests/ and serve_app/
from serve_app.llm_protocol import LLMRequest  # noqa: E402
from tests.local_serve import serve_run  # noqa: E402

PROMPTS = ["Tell me a long story about a lighthouse keeper.", "Describe a walk through an old city in spring.",
           "Write a long letter to a friend about your summer.", "Tell me about the history of bread."]
MAX_TOKENS = 128


def _body(prompt: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def via_router(client: openai.OpenAI, prompt: str) -> dict:
    started = time.perf_counter()
    first = last = None
    tokens = 0
    raw = client.chat.completions.with_raw_response.create(model="auto", **{
        k: v for k, v in _body(prompt).items() if k in ("messages", "max_tokens", "temperature", "stream",
                                                        "stream_options")}, extra_body={"ignore_eos": True})
    route = raw.headers["x-router-category"]
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return _timings(started, first, last, tokens) | {"route": route}


def direct(handle, served_model: str, prompt: str) -> dict:
    started = time.perf_counter()
    first = last = None
    tokens = 0
    request = LLMRequest("chat", {**_body(prompt), "model": served_model}, True)
    for events in handle.options(stream=True).stream.remote(request):
        for event in events.split("\n\n"):
            if not event.startswith("data: {"):
                continue
            chunk = json.loads(event[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return _timings(started, first, last, tokens)


def _timings(started: float, first: float | None, last: float | None, tokens: int) -> dict:
    return {"ttft_ms": (first - started) * 1000, "decode_tok_s": (tokens - 1) / (last - first), "tokens": tokens}


def _summary(runs: list[dict]) -> dict:
    return {"streams": len(runs),
            "ttft_ms_p50": round(statistics.median(r["ttft_ms"] for r in runs), 1),
            "decode_tok_s_p50": round(statistics.median(r["decode_tok_s"] for r in runs), 1),
            "decode_tok_s_mean": round(statistics.fmean(r["decode_tok_s"] for r in runs), 1)}


def measure(base_url: str, ray_tmp: str, rounds: int) -> dict:
    # Join the graph's private local cluster as tests/local_serve.py started it: on loopback (Ray would
    # otherwise swap 127.0.0.1 for this machine's address), its GCS port read from its session folder.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import serve

    port_file = next((Path(ray_tmp) / "ray" / "session_latest").glob("gcs_server_port_*"))
    ray.init(address=f"127.0.0.1:{port_file.read_text().strip()}", logging_level="ERROR")
    handle = serve.get_deployment_handle("llm-general", app_name="router")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    served = client.models.retrieve("general").model_extra["served_by"]
    via_router(client, PROMPTS[0]), direct(handle, served, PROMPTS[0])  # warm both paths
    results: dict = {}
    for width in (1, 4):
        router_runs, direct_runs = [], []
        with concurrent.futures.ThreadPoolExecutor(width) as pool:
            for i in range(rounds):
                paths = [("router", lambda p: via_router(client, p)), ("direct", lambda p: direct(handle, served, p))]
                for name, call in paths if i % 2 == 0 else paths[::-1]:
                    runs = list(pool.map(call, PROMPTS[:width] if width > 1 else [PROMPTS[i % len(PROMPTS)]]))
                    (router_runs if name == "router" else direct_runs).extend(runs)
        routes = {r["route"] for r in router_runs}
        assert routes == {"general"}, f"the prompts were routed to {routes}: the comparison needs llm-general"
        router, engine = _summary(router_runs), _summary(direct_runs)
        results[f"{width}_streams"] = {
            "router": router, "direct": engine,
            "router_share_of_engine_tok_s": round(router["decode_tok_s_mean"] / engine["decode_tok_s_mean"], 3),
            "added_ttft_ms_p50": round(router["ttft_ms_p50"] - engine["ttft_ms_p50"], 1)}
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "streaming.json"))
    args = parser.parse_args()
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": psutil.cpu_count(),
                          "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d"), "max_tokens": MAX_TOKENS, "rounds": args.rounds}
    with serve_run(ROOT / "serve_config.yaml") as running:
        result |= measure(running.base_url, running.ray_tmp, args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
