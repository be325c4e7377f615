"""Stats deployment: one place where every ingress replica's routing records add up."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.stats import RequestRecord, RoutingStats


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)
class StatsRecorder:
    def __init__(self) -> None:
        self.stats = RoutingStats()

    def record(self, record: RequestRecord) -> None:
        self.stats.record(record)

    def snapshot(self, routes: list[str]) -> dict[str, Any]:
        return self.stats.snapshot(routes)
