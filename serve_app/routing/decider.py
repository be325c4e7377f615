"""One routing block compiled for deciding: from a request's texts and their embeddings to a route.

The ingress builds a ``Decider`` from each routing block it accepts (with the route table that says which
LLM answers each route, serve_app/dispatch/routes.py) and swaps both in one assignment, so a request is
decided by exactly one block from start to end. The offline tools (eval, calibrate) build the very same
one, with the examples embedded in-process by the same model, and need nothing about the LLMs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_app.config.schema import RoutingConfig
from serve_app.routing.examples import ExampleIndex
from serve_app.routing.keywords import KeywordHits, KeywordMatcher
from serve_app.routing.policy import RoutingDecision, RoutingPolicy


def examples_of(config: RoutingConfig) -> list[str]:
    """Every route's examples, route after route: the order ``Decider`` expects their embeddings in."""
    return [example for route in config.routes for example in route.examples]


class Decider:
    def __init__(self, config: RoutingConfig, example_embeddings: np.ndarray) -> None:
        routes = config.routes
        per_route = np.split(example_embeddings, np.cumsum([len(r.examples) for r in routes])[:-1])
        self.config = config
        self.index = ExampleIndex([r.name for r in routes], per_route, config.top_k)
        self.keywords = KeywordMatcher({r.name: r.keywords.force for r in routes},
                                       {r.name: r.keywords.exclude for r in routes})
        self.policy = RoutingPolicy({r.name: config.threshold if r.threshold is None else r.threshold for r in routes},
                                    config.default_route)

    @property
    def default_route(self) -> str:
        return self.config.default_route

    def candidates(self, texts: Sequence[str], embeddings: np.ndarray,
                   top_k: int | None = None) -> tuple[list[dict[str, float]], list[KeywordHits]]:
        """Each candidate text's route scores and keyword hits: what the policy decides on."""
        return self.index.scores(embeddings, top_k), [self.keywords.hits(t) for t in texts]

    def decide(self, texts: Sequence[str], embeddings: np.ndarray) -> RoutingDecision:
        """The route for a request's candidate texts (last user turn first) and their unit-norm embeddings."""
        if not texts:
            return RoutingDecision(self.default_route, "no_text")
        return self.policy.decide(*self.candidates(texts, embeddings))
