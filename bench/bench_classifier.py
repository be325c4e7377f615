"""Benchmark the classifier per backend: in process, and through the deployment of a running graph.

    .venv/bin/python bench/bench_classifier.py                        # both parts (starts graphs: ~25 min)
    .venv/bin/python bench/bench_classifier.py --part in_process      # no Ray, no server (~5 min)
    .venv/bin/python bench/bench_classifier.py --part deployment      # `serve run` once per configuration
    .venv/bin/python bench/bench_classifier.py --part deployment --config onnx:0   # one configuration again
    .venv/bin/python bench/bench_classifier.py --part deployment --config onnx:0:threads --config onnx:0 --repeat 2
                                            # Serve's default threading against the router's, A/B/A/B

In process, every backend runs in processes of its own, so no runtime's threads compete with another's:
torch; onnx and openvino as this CPU runs them (int8 with VNNI, bf16 with bf16 units) and as a CPU without
those units runs them (-fp32/-f32). Per backend, over 200 short dev-set queries after a warm-up: one query
at a time through the encoder (p50/p99 wall, CPU ms) and through encoder and Router together (what the eval
CLI times); batches of 32 (q/s, CPU ms per query); the dev set's prompts over 128 tokens at max_seq_length
128 and 256; macro-F1 on the dev set; load time with a filled and with an empty export cache. Backends
alternate within each round; every number is the median over the rounds.

Through the deployment, per configuration (backend, batch_wait_timeout_s): `serve run` of serve_config.yaml
with those two values and the classifier in its own deployment (classifier.placement: deployment), then
single-query chat requests with max_tokens 1 sent one after another (the Ingress's /stats classifier_ms: the
hop to the Classifier and back, p50/p99), then the same requests from 32 concurrent clients (requests/s and
latency at the client; classifier_ms from /stats again, now over both runs). The graph needs ~10 GiB of RAM
and port 8000.

Loopback only; wall times on a shared machine are noisy (load averages are recorded; CPU times are
steadier). Writes bench/results/classifier.json after each part and each configuration, keeping the
results it does not measure again.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root holds serve_app/ and tests/
from facts import versions  # noqa: E402  (a sibling module: bench/ is on the path)

MODEL = "embedded:all-MiniLM-L6-v2"
SHORT_CHARS = 300  # "short": a one-line question, up to about 64 tokens
N_SHORT = 200
BATCH = 32
LONG_TOKENS = 128
PACKAGES = ("torch", "sentence-transformers", "transformers", "tokenizers", "onnxruntime", "onnx", "openvino", "ray")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# In-process variants: the backend, and the CPU flags it runs as if it lacked (an older CPU's precision).
VARIANTS = {"torch": ("torch", ()), "onnx": ("onnx", ()), "onnx-fp32": ("onnx", ("INT8",)),
            "openvino": ("openvino", ()), "openvino-f32": ("openvino", ("BF16",))}
# Through the deployment: (backend, batch_wait_timeout_s). The first is the graph as it was before this
# benchmark existed (torch, 5 ms batch wait).
DEPLOYMENT_CONFIGS = (("torch", 0.005), ("torch", 0.0), ("onnx", 0.005), ("onnx", 0.0), ("openvino", 0.0))
SEQUENTIAL = 150
_CALL = re.compile(r"CALL embed OK ([0-9.]+)ms")  # Serve's access log line of one Classifier.embed call
CONCURRENT_CLIENTS = 32
CONCURRENT_REQUESTS = 320


def dev_texts(data: str) -> tuple[list[str], list[str]]:
    """Short queries, and the prompts longer than LONG_TOKENS tokens."""
    from tokenizers import Tokenizer

    from serve_app.embedded import minilm_path
    from serve_app.tools.labelled import load_labelled

    texts = [item.texts[0] for item in load_labelled(data)]
    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    long = [t for t in texts if len(tokenizer.encode(t).ids) > LONG_TOKENS]
    return [t for t in texts if len(t) <= SHORT_CHARS][:N_SHORT], long


def percentiles(samples: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(samples, [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


def timed_ms(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - started) * 1000


def cpu_ms(fn) -> float:
    """CPU time of this process's threads: steadier than wall time while other processes compete."""
    started = time.process_time()
    fn()
    return (time.process_time() - started) * 1000


def load_variant(variant: str, max_seq_length: int = 128):
    from serve_app.routing.cpu_features import BF16_FLAGS, INT8_FLAGS, cpu_info
    from serve_app.routing.encoder import load_encoder

    backend, lacking = VARIANTS[variant]
    flags = frozenset().union(*({"INT8": INT8_FLAGS, "BF16": BF16_FLAGS | {"amx_bf16"}}[f] for f in lacking))
    return load_encoder(MODEL, backend, max_seq_length, cpu=cpu_info().without(flags))


def child(variant: str, data: str, cold: bool) -> dict:
    """One variant in this process; the export cache is SEMANTIC_ROUTER_CACHE, set by the parent."""
    started = time.perf_counter()
    encoder = load_variant(variant)
    out = {"name": encoder.name, "load_s": time.perf_counter() - started}
    if cold:
        return out
    from serve_app.config.file import load_app_config
    from serve_app.routing.encoder import embed_queries
    from serve_app.tools.accuracy import classification_scores
    from serve_app.tools.eval import InProcessRouter
    from serve_app.tools.labelled import load_labelled

    short, long = dev_texts(data)
    config = load_app_config(ROOT / "serve_config.yaml")
    classifier = InProcessRouter.from_config(config, encoder)
    for text in short:  # warm-up: every length once (OpenVINO prepares kernels per input shape)
        classifier.classify((text,))
    single = [timed_ms(encoder.encode, [t]) for t in short]
    single_cpu = cpu_ms(lambda: [encoder.encode([t]) for t in short]) / len(short)
    routed = [timed_ms(classifier.classify, (t,)) for t in short]
    batches = [short[i:i + BATCH] for i in range(0, len(short), BATCH)]
    for batch in batches:
        encoder.encode(batch)
    qps = [len(short) / (sum(timed_ms(encoder.encode, b) for b in batches) / 1000) for _ in range(3)]
    batch_cpu = cpu_ms(lambda: [encoder.encode(b) for b in batches]) / len(short)
    long_128 = [timed_ms(encoder.encode, [t]) for t in long + long][len(long):]  # the second pass: warm
    encoder_256 = load_variant(variant, max_seq_length=256)
    long_256 = [timed_ms(encoder_256.encode, [t]) for t in long + long][len(long):]
    order = [r.name for r in config.routing.routes]
    f1 = {}
    for part in ("all", "holdout"):
        items = load_labelled(data, config.routing.context_turns, part)
        vectors = embed_queries(encoder, [i.texts for i in items])
        predicted = [classifier.router.decide(i.texts, v).route for i, v in zip(items, vectors)]
        f1[part] = classification_scores([i.label for i in items], predicted, order).macro_f1
    out.update(describe=encoder.describe(), single_p50_ms=percentiles(single)["p50"],
               single_p99_ms=percentiles(single)["p99"], single_cpu_ms=single_cpu,
               classify_p50_ms=percentiles(routed)["p50"], classify_p99_ms=percentiles(routed)["p99"],
               batch32_qps=statistics.median(qps), batch32_cpu_ms_per_query=batch_cpu,
               long_p50_ms_128=statistics.median(long_128), long_p50_ms_256=statistics.median(long_256),
               macro_f1_all=f1["all"], macro_f1_holdout=f1["holdout"],
               max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def run_child(variant: str, data: str, cache: str, cold: bool) -> dict:
    env = {**os.environ, "SEMANTIC_ROUTER_CACHE": cache, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", variant, "--data", data] + (["--cold"] if cold else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def variants() -> list[str]:
    from serve_app.routing.cpu_features import cpu_info
    from serve_app.routing.encoder import installed

    cpu = cpu_info()
    out = ["torch"]
    if installed("onnx"):
        out += ["onnx", "onnx-fp32"] if cpu.int8 else ["onnx"]
    if installed("openvino"):
        out += ["openvino", "openvino-f32"] if cpu.bf16 else ["openvino"]
    return out


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {**{k: v for k, v in runs[0].items() if k not in keys},
            **{k: round(statistics.median(r[k] for r in runs), 4 if k.startswith("macro") else 2) for k in keys},
            "rounds": [{k: round(r[k], 2) for k in keys if not k.startswith("macro")} for r in runs]}


def in_process(data: str, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {}
    cold: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as warm_cache:
        for variant in variants():  # fill the cache the measured loads read from
            run_child(variant, data, warm_cache, cold=True)
        for n in range(rounds):
            for variant in variants():
                with tempfile.TemporaryDirectory() as empty:
                    cold.setdefault(variant, []).append(run_child(variant, data, empty, cold=True)["load_s"])
                runs.setdefault(variant, []).append(run_child(variant, data, warm_cache, cold=False))
                print(f"round {n + 1} {variant}: {json.dumps(runs[variant][-1])}", file=sys.stderr, flush=True)
    return {variant: {**median_of(r), "cold_load_s": round(statistics.median(cold[variant]), 2)}
            for variant, r in runs.items()}


def chat(client, text: str) -> float:
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={
        "model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": text}]})
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def through_deployment(backend: str, wait_s: float, texts: list[str], env: dict[str, str]) -> dict:
    import httpx
    import yaml

    from harness.local_serve import serve_run

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = config["applications"][0]
    # What this part measures is the hop to the Classifier deployment (the GPU graph's placement), with its access
    # log on: Serve times each call inside the replica there. On a CPU the shipped graph has no such hop.
    app["args"]["classifier"].update(backend=backend, placement="deployment")
    app["deployments"].append({"name": "Classifier", "logging_config": {"enable_access_log": True},
                               "user_config": {"batch_wait_timeout_s": wait_s}})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with serve_run(path, env=env) as running, httpx.Client(base_url=running.base_url, timeout=120) as client:
            for text in texts[:5]:  # warm-up: every engine's first request
                chat(client, text)
            sequential = [chat(client, t) for t in (texts * 2)[:SEQUENTIAL]]
            after_sequential = client.get("/stats").json()["classifier_ms"]
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
                concurrent_ms = list(pool.map(lambda t: chat(client, t), (texts * 2)[:CONCURRENT_REQUESTS]))
            wall = time.perf_counter() - started
            after_concurrent = client.get("/stats").json()["classifier_ms"]
            log = _replica_logs(running.ray_tmp)
    encoder = next((line.split("): ", 1)[1].strip() for line in log if "Classifier encoder (" in line), None)
    # Serve's access log times each call inside the replica (batch wait and encoder): the rest of
    # classifier_ms is the hop (handle, serialisation, both event loops).
    inside = [float(m[1]) for m in (_CALL.search(line) for line in log) if m]
    inside_sequential, inside_concurrent = inside[5:5 + SEQUENTIAL], inside[5 + SEQUENTIAL:]
    return {"backend": backend, "batch_wait_timeout_s": wait_s, "encoder": encoder,
            "startup_s": round(running.startup_s, 1),
            "sequential": {"requests": SEQUENTIAL, "classifier_ms": after_sequential,
                           "inside_replica_ms": _rounded(inside_sequential),
                           "request_ms": _rounded(sequential)},
            "concurrent": {"clients": CONCURRENT_CLIENTS, "requests": CONCURRENT_REQUESTS,
                           "requests_per_s": round(CONCURRENT_REQUESTS / wall, 1),
                           "request_ms": _rounded(concurrent_ms), "inside_replica_ms": _rounded(inside_concurrent),
                           "classifier_ms_over_both_runs": after_concurrent}}


def _parse_config(text: str) -> tuple[str, float, bool]:
    backend, wait_ms, *threads = text.split(":")
    return backend, float(wait_ms) / 1000, threads == ["threads"]


def _rounded(samples: list[float]) -> dict[str, float] | None:
    return {k: round(v, 1) for k, v in percentiles(samples).items()} if samples else None


def _replica_logs(ray_tmp: str) -> list[str]:
    """The Classifier replica's log lines: it says which encoder it runs, and with auto why."""
    lines = []
    for path in Path(ray_tmp).glob("**/serve/replica_*Classifier*.log"):
        lines += path.read_text(errors="replace").splitlines()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("in_process", "deployment", "both"), default="both")
    parser.add_argument("--config", action="append", metavar="BACKEND:WAIT_MS[:threads]",
                        help="deployment configurations to measure (default: " +
                        " ".join(f"{b}:{w * 1000:g}" for b, w in DEPLOYMENT_CONFIGS) + ")")
    parser.add_argument("--repeat", type=int, default=1, help="measure the deployment configurations this many "
                        "times over, alternating (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="in-process rounds (default: %(default)s)")
    parser.add_argument("--data", default=str(ROOT / "data" / "dev.jsonl"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "classifier.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.cold)))
        return

    from serve_app.config.graph import SERVE_FAST_PATH_ENV, serve_fast_path_env
    from serve_app.routing.cpu_features import cpu_info
    from serve_app.routing.encoder import choose_backend, installed

    cpu = cpu_info()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update({"date": time.strftime("%Y-%m-%d"),
                   "machine": {"cpu": cpu.model, "isa": cpu.isa, "flags": [f for f in FLAGS if f in cpu.flags],
                               "cpus": os.cpu_count(), "load_average_before": os.getloadavg()},
                   "versions": {"python": platform.python_version()} | versions(PACKAGES),
                   "auto_choice": choose_backend(cpu, [b for b in ("onnx", "openvino") if installed(b)])})
    short, long = dev_texts(args.data)

    def save() -> None:  # after every part and configuration: an interrupted run keeps what it measured
        result["machine"]["load_average_after"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if args.part in ("in_process", "both"):
        result["queries"] = {"short": len(short), "long_over_128_tokens": len(long), "batch": BATCH}
        result["in_process"] = in_process(args.data, args.rounds)
        save()
    if args.part in ("deployment", "both"):
        configs = [_parse_config(c) for c in args.config or []] or [(b, w, False) for b, w in DEPLOYMENT_CONFIGS]
        for run, (backend, wait_s, serve_threads) in enumerate(configs * args.repeat):
            if backend != "torch" and not installed(backend):
                continue
            # The router's small deployments run on the replica loop (serve_app/config/graph.py) unless the
            # environment of
            # `serve run` says otherwise: ":threads" measures Serve's default threading, for comparison.
            env = serve_fast_path_env({k: "1" for k in SERVE_FAST_PATH_ENV} if serve_threads else {})
            row = through_deployment(backend, wait_s, short, env) | {"serve_env": env}
            threads = "Serve's threads" if serve_threads else "the replica loop"
            key = f"{backend}, batch wait {wait_s * 1000:g} ms, {threads}"
            if args.repeat > 1:  # alternating repeats: A/B pairs on a noisy machine
                key += f", run {run // len(configs) + 1}"
            result.setdefault("deployment", {})[key] = row
            print(json.dumps(row), file=sys.stderr, flush=True)
            save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
