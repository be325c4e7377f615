"""The classifier: the embedding model, batched across concurrent requests, wherever it runs.

It embeds and nothing else: which route a request takes is decided by the ingress, the one owner of
the routing block, so a routing update can never be half applied. Where the encoder runs is
``classifier.placement`` (serve_app/config/graph.py):

- ``ingress``: inside each Ingress replica (``InIngressClassifier``). On a CPU the hop to another process
  cost more CPU than the model itself; here the encoder scales with the ingress.
- ``deployment``: the ``Classifier`` deployment, called through its handle (``ClassifierDeploymentClient``).
  On a GPU one batch serves every ingress replica's requests, which pays for the hop.

The Ingress sees the same two calls either way (``ClassifierClient``), so the routing code is the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util.metrics import Counter

from serve_app.config.live import LiveConfig
from serve_app.config.schema import ClassifierBatching, ClassifierConfig
from serve_app.routing.embedding_cache import EmbeddingCache
from serve_app.routing.encoder import Encoder, embed_queries, encode, load_encoder
from serve_app.routing.thread_batches import ThreadBatcher

logger = logging.getLogger("ray.serve")


class Embedder:
    """An encoder behind the embedding cache: texts embedded lately (``classifier.cache_size``) never reach the
    encoder; the rest go to ``batched``, where the texts of concurrent requests share encoder calls."""

    def __init__(self, encoder: Encoder, batched: Callable[[tuple[str, ...]], Awaitable[np.ndarray]],
                 cache_size: int = 0) -> None:
        self.encoder = encoder
        self.batched = batched
        self.cache = EmbeddingCache(cache_size)
        self.cached_texts = Counter("router_embedding_cache_texts", "Texts the classifier was asked to embed: hit "
                                    "(from the cache, no encoder call) or miss.", tag_keys=("result",))

    async def embed(self, texts: tuple[str, ...]) -> np.ndarray:
        """Unit vectors of one request's texts; only those not in the cache go to the encoder, in a batch."""
        rows, missing = self.cache.lookup(texts)
        if hits := len(texts) - len(missing):
            self.cached_texts.inc(hits, tags={"result": "hit"})
        if not missing:
            return np.stack(rows) if rows else np.zeros((0, self.encoder.dim), dtype=np.float32)
        self.cached_texts.inc(len(missing), tags={"result": "miss"})
        return self.cache.fill(texts, rows, missing, await self.batched(missing))

    async def embed_examples(self, texts: list[str]) -> np.ndarray:
        """A routing block's examples, when the ingress (re)builds its router: hundreds at once, not batched."""
        return await asyncio.to_thread(encode, self.encoder, texts)


async def load_encoder_logged(config: ClassifierConfig, where: str) -> Encoder:
    encoder = await asyncio.to_thread(load_encoder, config.model, config.backend, config.max_seq_length,
                                      threads=config.threads)
    logger.info("Classifier encoder (%s): %s; %s; cache of %d texts", where, encoder.describe(), encoder.choice,
                config.cache_size)
    return encoder


# max_ongoing_requests: at least the largest batch, so a whole batch can be waiting. No access log: an internal
# hop, the ingress logs the request.
@serve.deployment(max_ongoing_requests=128, logging_config={"enable_access_log": False})
class Classifier:
    async def __init__(self, config: ClassifierConfig) -> None:
        encoder = await load_encoder_logged(config, "Classifier deployment")
        # Serve's batching: its batch wait (live, below) can gather a GPU's batch across every ingress replica.
        self._batched = serve.batch(max_concurrent_batches=encoder.parallel)(self._embed_batch)
        self.embedder = Embedder(encoder, self._batched, config.cache_size)
        self.live = LiveConfig("Classifier", ClassifierBatching, "batching settings")
        await self.reconfigure({})  # the defaults, until (and unless) the Serve config sets a user_config

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # A refused update is logged and the batching in use stays (serve_app/config/live.py).
        await self.live.apply(user_config, self._apply)

    async def _apply(self, batching: ClassifierBatching) -> ClassifierBatching:
        self._batched.set_max_batch_size(batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        return batching

    async def _embed_batch(self, queries: list[tuple[str, ...]]) -> list[np.ndarray]:
        """Every text of the batch's requests in one encoder call, on a thread: the loop stays free for the next."""
        return await asyncio.to_thread(embed_queries, self.embedder.encoder, queries)

    async def embed(self, texts: tuple[str, ...]) -> np.ndarray:
        return await self.embedder.embed(texts)

    async def embed_examples(self, texts: list[str]) -> np.ndarray:
        return await self.embedder.embed_examples(texts)


class ClassifierClient(Protocol):
    """What the ingress asks of the classifier, wherever the encoder runs."""

    async def embed(self, texts: tuple[str, ...], timeout_s: float) -> np.ndarray:
        """The unit vectors of one request's texts within ``timeout_s``; on a timeout its work stops."""

    async def embed_examples(self, texts: list[str]) -> np.ndarray: ...


# A lone request never waits (no batch wait), and under load the requests that arrive while a batch computes
# share the next one, formed on the encoder's threads (serve_app/routing/thread_batches.py). In a busy replica
# the model's weights fall out of the CPU caches between calls, so one pass over them for several texts costs
# less than a pass each (bench_capacity at 32 clients, three pairs of runs: 10-25 % more req/s, 0.7-2.9 ms less
# CPU per request; 8 and 16 measure alike). In a batch a text embeds the same to 5e-4 (bf16,
# tests/test_encoder.py): no decision of the development set's 771 changed.
IN_INGRESS_MAX_BATCH = 8


class InIngressClassifier:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    async def embed(self, texts: tuple[str, ...], timeout_s: float) -> np.ndarray:
        return await asyncio.wait_for(self.embedder.embed(texts), timeout_s)

    async def embed_examples(self, texts: list[str]) -> np.ndarray:
        return await self.embedder.embed_examples(texts)


class ClassifierDeploymentClient:
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def embed(self, texts: tuple[str, ...], timeout_s: float) -> np.ndarray:
        response = self.handle.embed.remote(texts)
        try:
            return await asyncio.wait_for(response, timeout_s)
        except BaseException:
            response.cancel()  # a timeout, or the client went away: stop the replica's work too
            raise

    async def embed_examples(self, texts: list[str]) -> np.ndarray:
        return await self.handle.embed_examples.remote(texts)


async def classifier_client(target: DeploymentHandle | ClassifierConfig) -> ClassifierClient:
    """The Classifier deployment's handle, or the config of an encoder to load in this (ingress) replica."""
    if isinstance(target, ClassifierConfig):
        encoder = await load_encoder_logged(target, "in the Ingress replica")
        batches = ThreadBatcher(partial(embed_queries, encoder), encoder.parallel, IN_INGRESS_MAX_BATCH, "encoder")
        return InIngressClassifier(Embedder(encoder, batches, target.cache_size))
    return ClassifierDeploymentClient(target)
