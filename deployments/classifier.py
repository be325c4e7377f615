"""Classifier deployment: the embedding model, batched across concurrent requests.

It embeds and nothing else: which route a request takes is decided by the ingress, the one owner of
the routing block, so a routing update can never be half applied.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

from serve_app.config.live import LiveConfig
from serve_app.config.schema import ClassifierBatching, ClassifierConfig
from serve_app.routing.encoder import embed_queries, encode, load_encoder

logger = logging.getLogger("ray.serve")


@serve.deployment
class Classifier:
    async def __init__(self, config: ClassifierConfig) -> None:
        self.encoder = await asyncio.to_thread(load_encoder, config.model, config.backend, config.max_seq_length)
        logger.info("Classifier encoder: %s; %s", self.encoder.describe(), self.encoder.choice)
        self.live = LiveConfig("Classifier", ClassifierBatching, "batching settings")
        await self.reconfigure({})  # the defaults, until (and unless) the Serve config sets a user_config

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # A refused update is logged and the batching in use stays (serve_app/config/live.py).
        await self.live.apply(user_config, self._apply)

    async def _apply(self, batching: ClassifierBatching) -> ClassifierBatching:
        self.embed.set_max_batch_size(batching.max_batch_size)
        self.embed.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        return batching

    @serve.batch
    async def embed(self, queries: list[tuple[str, ...]]) -> list[np.ndarray]:
        """Unit vectors of each request's candidate texts: every text of the batch in one encoder call."""
        # The encoder is CPU/GPU bound: keep the replica's event loop free for the next batch.
        return await asyncio.to_thread(embed_queries, self.encoder, queries)

    async def embed_examples(self, texts: list[str]) -> np.ndarray:
        """A routing block's examples, when the ingress (re)builds its router: hundreds at once, not batched."""
        return await asyncio.to_thread(encode, self.encoder, texts)
