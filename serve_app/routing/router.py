"""One routing block compiled for serving: the decision for a request, and the LLM that answers a route.

The ingress builds a ``Router`` from each routing block it accepts and swaps it in one assignment, so a
request is decided by exactly one block from start to end. The examples' embeddings come from the
classifier deployment (the offline tools embed them in-process with the same model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serve_app.config import RoutingConfig, check_route_llms
from serve_app.errors import OpenAIError
from serve_app.plan import LLMPlan
from serve_app.requests import AUTO_MODEL
from serve_app.routing.examples import ExampleIndex
from serve_app.routing.keywords import KeywordHits, KeywordMatcher
from serve_app.routing.policy import RoutingDecision, RoutingPolicy


def examples_of(config: RoutingConfig) -> list[str]:
    """Every route's examples, route after route: the order ``Router`` expects their embeddings in."""
    return [example for route in config.routes for example in route.examples]


class Router:
    def __init__(self, config: RoutingConfig, example_embeddings: np.ndarray, llms: Mapping[str, LLMPlan]) -> None:
        check_route_llms(config, list(llms))
        routes = config.routes
        per_route = np.split(example_embeddings, np.cumsum([len(r.examples) for r in routes])[:-1])
        self.config = config
        self.index = ExampleIndex([r.name for r in routes], per_route, config.top_k)
        self.keywords = KeywordMatcher({r.name: r.keywords.force for r in routes},
                                       {r.name: r.keywords.exclude for r in routes})
        self.policy = RoutingPolicy({r.name: config.threshold if r.threshold is None else r.threshold for r in routes},
                                    config.default_route)
        self.targets = {r.name: llms[r.llm] for r in routes}
        self.defaults = {r.name: r.defaults for r in routes}
        # Route names win; a model id several routes share means the default route if it is one of them.
        self._aliases: dict[str, str] = {}
        for route in sorted(self.targets, key=lambda r: r != config.default_route):
            t = self.targets[route]
            for alias in (t.configured_model, t.served_model, t.llm):
                self._aliases.setdefault(alias, route)
        self._aliases.update({route: route for route in self.targets})

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

    def chain(self, route: str, explicit: bool, tools: bool = False) -> list[str]:
        """The routes to try for a request, in order: its own, then its fallbacks, one per LLM deployment.

        A request that named its model stays with it unless the routing block says otherwise; a request with
        tools only falls back to models that can call them.
        """
        self.require_tools(route, tools)
        tried, chain = set(), []
        for name in [route, *([] if explicit and not self.config.fallback_explicit else self.config.fallbacks(route))]:
            target = self.targets[name]
            # The same deployment failing twice tells nothing new.
            if target.llm not in tried and (target.tools or not tools):
                tried.add(target.llm)
                chain.append(name)
        return chain

    def require_tools(self, route: str, tools: bool) -> None:
        """A request with tools may only go to a route whose model has tool calling configured."""
        target = self.targets[route]
        if tools and not target.tools:
            where = "cpu_fallback.tool_calling" if target.cpu_fallback else f"tool_calling of llms entry {target.llm!r}"
            raise OpenAIError(
                400, f"Route {route!r} answers with {target.served_model}, which has no tool calling configured, so it "
                f"cannot answer a request with tools. Set {where} in the Serve config (parser, and chat_template if "
                "the model's own renders no tools), or send tool_choice: none.",
                code="tools_not_supported", param="tools")

    def explicit_route(self, model: str) -> str:
        """The route a request that names ``model`` goes to, without classification."""
        try:
            return self._aliases[model]
        except KeyError:
            known = ", ".join([AUTO_MODEL, *self.targets])
            raise OpenAIError(
                404, f"The model {model!r} does not exist. Use 'auto' (or omit 'model') to route by content, "
                f"or one of: {known}.", code="model_not_found", param="model",
            ) from None
