"""Classifier deployment: the embedding model, batched across concurrent requests."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.metrics import Counter

from serve_app.config import RoutingConfig
from serve_app.live_routing import LiveRouting
from serve_app.routing import RoutingDecision
from serve_app.semantic import SemanticClassifier, load_encoder


@serve.deployment(max_ongoing_requests=128)
class Classifier:
    def __init__(self, model: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.005) -> None:
        # The encoder is loaded once; routes and thresholds come (and change) through reconfigure.
        self.encoder = load_encoder(model)
        self.classifier: SemanticClassifier | None = None
        self.live: LiveRouting[bool] = LiveRouting("Classifier")
        self.updates = Counter("router_routing_updates", "Routing blocks applied or refused (Serve adds the deployment tag).",
                               tag_keys=("result",))
        self.classify.set_max_batch_size(max_batch_size)
        self.classify.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # Encoding the examples takes a second or two: off the event loop, so classification goes on
        # with the previous routes until the new ones replace them in one assignment.
        applied = await asyncio.to_thread(self.live.apply, user_config, self._configure)
        self.updates.inc(tags={"result": "refused" if applied is None else "applied"})

    def _configure(self, routing: RoutingConfig) -> bool:
        if self.classifier is None:
            self.classifier = SemanticClassifier(self.encoder, routing)
        else:
            self.classifier.configure(routing)
        return True

    def check_health(self) -> None:
        self.live.require()

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def classify(self, queries: list[tuple[str, ...]]) -> list[RoutingDecision]:
        # The encoder is CPU/GPU bound: keep the replica's event loop free for the next batch.
        return await asyncio.to_thread(self.classifier.classify_many, queries)
