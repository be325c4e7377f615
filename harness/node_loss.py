"""A worker node lost under load: what clients see, and how long until the graph is whole again.

Bounded load over every route (whole answers and streams, the official ``openai`` client, loopback) runs
while the LLM node holding the replicas is SIGKILLed; the autoscaler replaces it and Serve puts the
replicas back, untouched by anyone. Used by tests/test_multinode.py and bench/bench_multinode.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import openai

from harness.local_cluster import LocalCluster

PROMPTS = [  # one per route, auto-routed
    "Write a Python function that checks whether a string is a palindrome.",
    "Solve for x: 3x + 7 = 22. Show the steps.",
    "What is the capital of Australia?",
]
CLIENT_TIMEOUT_S = 120  # a request that takes longer counts as hung
STREAM_TOKENS = 160


@dataclass
class Outcome:
    started: float  # seconds since the load began
    seconds: float
    stream: bool
    status: int  # 0: no answer within CLIENT_TIMEOUT_S (hung), -1: connection error
    fallback: bool = False  # x-router-fallback: another route answered
    retry_after: bool = False
    error_event: bool = False  # a stream that began and then ended with an error event


@dataclass
class NodeLossReport:
    killed_node: str
    processes_killed: int
    kill_at_s: float  # since the load began
    health_during: dict[str, Any] | None  # the first /health answer that was not 200 after the kill
    unhealthy_after_s: float | None  # kill -> /health first not 200
    healthy_after_s: float | None  # kill -> /health 200 again
    new_node: str | None
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        after = [o for o in self.outcomes if o.started >= self.kill_at_s]
        return {
            "sent": len(self.outcomes),
            "answered": sum(o.status == 200 and not o.error_event for o in self.outcomes),
            "fell_back": sum(o.fallback for o in self.outcomes),
            "503": sum(o.status == 503 for o in self.outcomes),
            "503_without_retry_after": sum(o.status == 503 and not o.retry_after for o in self.outcomes),
            "other_status": sum(o.status not in (200, 503) for o in self.outcomes),
            "stream_error_events": sum(o.error_event for o in self.outcomes),
            "hung": sum(o.status == 0 for o in self.outcomes),
            "sent_after_kill": len(after),
            "slowest_after_kill_ms": round(max((o.seconds for o in after), default=0) * 1000),
        }

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "outcomes"}
        return data | {"counts": self.counts()}


async def _one(client: openai.AsyncOpenAI, prompt: str, stream: bool, t0: float) -> Outcome:
    started = time.monotonic()
    out = Outcome(started - t0, 0.0, stream, 0)
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            raw = await client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": prompt}], stream=stream,
                # A stream long enough to be under way when the node dies; a whole answer short.
                max_tokens=STREAM_TOKENS if stream else 24, extra_body={"ignore_eos": stream})
            out.status = raw.status_code
            out.fallback = "x-router-fallback" in raw.headers
            if stream:
                try:
                    async for _ in raw.parse():
                        pass
                except openai.APIError:  # the stream's error event, after it began
                    out.error_event = True
            else:
                raw.parse()
    except TimeoutError:
        out.status = 0
    except openai.APIStatusError as exc:
        out.status = exc.status_code
        out.retry_after = "retry-after" in exc.response.headers
    except openai.APIConnectionError:
        out.status = -1
    out.seconds = time.monotonic() - started
    return out


async def _load(base_url: str, clients: int, stop: asyncio.Event, outcomes: list[Outcome], t0: float) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                                timeout=CLIENT_TIMEOUT_S + 10)

    async def worker(n: int) -> None:
        i = n
        while not stop.is_set():
            outcomes.append(await _one(client, PROMPTS[i % len(PROMPTS)], stream=i % 2 == 1, t0=t0))
            i += 1
            await asyncio.sleep(0.2)  # bounded: at most `clients` requests in flight, a few per second

    await asyncio.gather(*(worker(n) for n in range(clients)))
    await client.close()


async def _health(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            r = await http.get(f"{base_url}/health")
            return r.status_code, r.json()
        except (httpx.HTTPError, ValueError):
            return -1, {}


async def node_loss(cluster: LocalCluster, base_url: str, clients: int = 4, warm_s: float = 10,
                    recover_timeout_s: float = 600, after_s: float = 15) -> NodeLossReport:
    """Kill the worker node that holds the most replicas while ``clients`` send requests; wait for recovery."""
    t0 = time.monotonic()
    stop, outcomes = asyncio.Event(), []
    load = asyncio.create_task(_load(base_url, clients, stop, outcomes, t0))
    await asyncio.sleep(warm_s)
    victim = _busiest_worker(cluster)
    before = {n["node_id"] for n in cluster.alive_workers()}
    killed = cluster.kill_node(victim)
    kill_at = time.monotonic()
    report = NodeLossReport(victim, killed, kill_at - t0, None, None, None, None, outcomes)
    while time.monotonic() - kill_at < recover_timeout_s:
        status, body = await _health(base_url)
        if status != 200 and report.health_during is None:
            report.health_during, report.unhealthy_after_s = body, round(time.monotonic() - kill_at, 1)
        elif status == 200 and report.health_during is not None:
            report.healthy_after_s = round(time.monotonic() - kill_at, 1)
            break
        await asyncio.sleep(1)
    if report.healthy_after_s is not None:
        # The load goes on against the healed graph for after_s, and until `clients` requests sent after the
        # heal have answered: a restarted engine's first requests can take longer than after_s. Bounded.
        healed_at, deadline = report.kill_at_s + report.healthy_after_s, time.monotonic() + after_s + CLIENT_TIMEOUT_S
        await asyncio.sleep(after_s)
        while time.monotonic() < deadline and sum(o.started > healed_at for o in outcomes) < clients:
            await asyncio.sleep(1)
    stop.set()
    await load
    new = [n["node_id"] for n in cluster.alive_workers() if n["node_id"] not in before]
    report.new_node = new[0] if new else None
    return report


def _busiest_worker(cluster: LocalCluster) -> str:
    """The worker node with the most running replicas of the application."""
    count = Counter(node for nodes in cluster.running_on().values() for node in nodes)
    workers = {n["node_id"] for n in cluster.alive_workers()}
    return max((n for n in count if n in workers), key=count.__getitem__)
