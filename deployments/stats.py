"""Stats deployment: where every ingress replica's routing statistics add up for ``/stats``.

Ingress replicas record each request in process and send their statistics here about once a second,
only when they changed: one call per replica per second, never one per request, and a request never
waits for it. If this deployment is down, requests are served as usual and ``/stats`` answers 503.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.dispatch.stats import RoutingStats


@serve.deployment(num_replicas=1, logging_config={"enable_access_log": False})  # internal: one report a second
class StatsAggregator:
    def __init__(self) -> None:
        self.replicas: dict[str, RoutingStats] = {}  # the latest statistics of every ingress replica, by id

    def report(self, replica_id: str, stats: RoutingStats) -> None:
        self.replicas[replica_id] = stats

    def snapshot(self, routes: list[str]) -> dict[str, Any]:
        return RoutingStats.merged(list(self.replicas.values())).snapshot(routes)
