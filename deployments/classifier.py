"""Classifier deployment: the embedding model, batched across concurrent requests."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serve_app.config import ClassifierConfig, RouteConfig
from serve_app.routing import RoutingDecision
from serve_app.semantic import SemanticClassifier, load_encoder


@serve.deployment(max_ongoing_requests=128)
class Classifier:
    def __init__(self, model: str) -> None:
        # The encoder is loaded once; routes and thresholds come (and change) through reconfigure.
        self.encoder = load_encoder(model)
        self.classifier: SemanticClassifier | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ClassifierConfig(**user_config["classifier"])
        routes = [RouteConfig(**r) for r in user_config["routes"]]
        if self.classifier is None:
            self.classifier = SemanticClassifier(self.encoder, config, routes, user_config["default_route"])
        else:
            self.classifier.configure(config, routes, user_config["default_route"])
        self._batch_options(config)

    def _batch_options(self, config: ClassifierConfig) -> None:
        self.classify.set_max_batch_size(config.max_batch_size)
        self.classify.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def classify(self, queries: list[tuple[str, ...]]) -> list[RoutingDecision]:
        # The encoder is CPU/GPU bound: keep the replica's event loop free for the next batch.
        return await asyncio.to_thread(self.classifier.classify_many, queries)
