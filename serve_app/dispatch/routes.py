"""The route table of one routing block: which LLM answers each route, its fallbacks, its defaults, its names.

What the decision does not need and the dispatch does: the ingress builds one beside each ``Decider``
(serve_app/routing/decider.py), from the same routing block and the application's LLM plans.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import AUTO_MODEL
from serve_app.config.schema import RoutingConfig, check_route_llms
from serve_app.llm.plan import LLMPlan


class RouteTable:
    def __init__(self, config: RoutingConfig, llms: Mapping[str, LLMPlan]) -> None:
        check_route_llms(config, list(llms))
        self.config = config
        self.targets = {r.name: llms[r.llm] for r in config.routes}
        self.defaults = {r.name: r.defaults for r in config.routes}
        # Route names win; a model id several routes share means the default route if it is one of them.
        self._aliases: dict[str, str] = {}
        for route in sorted(self.targets, key=lambda r: r != config.default_route):
            t = self.targets[route]
            for alias in (t.configured_model, t.served_model, t.llm):
                self._aliases.setdefault(alias, route)
        self._aliases.update({route: route for route in self.targets})

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

    def model_cards(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: ``auto``, then every route with the model that answers it."""
        now = int(time.time())
        cards = [{"id": AUTO_MODEL, "object": "model", "created": now, "owned_by": "semantic-router",
                  "description": "Routes each request by its content to one of the models below."}]
        for route, t in self.targets.items():
            cards.append({
                "id": route, "object": "model", "created": now, "owned_by": "semantic-router",
                "root": t.served_model, "served_by": t.served_model, "configured_model": t.configured_model,
                "backend": "external" if t.external else "vllm", "endpoint": t.endpoint,
                "deployment": t.deployment, "cpu_fallback": t.cpu_fallback, "tools": t.tools,
            })
        return cards

    def model_card(self, model: str) -> dict[str, Any]:
        """One model by any name a request may use: ``auto``, a route, or a route's served model id."""
        cards = {card["id"]: card for card in self.model_cards()}
        return cards.get(model) or cards[self.explicit_route(model)]  # explicit_route 404s the unknown
