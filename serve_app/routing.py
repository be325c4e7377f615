"""The routing policy: from similarity scores, or an explicit model name, to a route.

Pure logic, no Ray and no model: the classifier deployment and the evaluation harness feed it
scores; the ingress asks it which route a named model means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from serve_app.config import RoutingConfig, check_route_llms
from serve_app.errors import OpenAIError
from serve_app.keywords import NO_HITS, KeywordHits

Reason = Literal["classified", "context", "keyword", "below_threshold", "no_text", "explicit", "classifier_error",
                 "unknown_route"]
# Decisions that sent a request to the default route for want of a better one.
FALLBACK_REASONS = frozenset({"below_threshold", "no_text", "classifier_error", "unknown_route"})


@dataclass(frozen=True)
class RoutingDecision:
    route: str
    reason: Reason
    score: float | None = None  # the winning route's score
    margin: float | None = None  # winner minus runner-up (negative when a keyword overrode the scores)
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_fallback(self) -> bool:
        return self.reason in FALLBACK_REASONS


class RoutingPolicy:
    """Pick the best-scoring route if it clears its threshold, else the default route.

    Candidates are tried in order (the last user turn, then the recent conversation): a follow-up
    such as "and now in Rust?" is not confident alone, but the conversation around it is. A
    candidate's keyword hits come first: an excluded route cannot win it, a forced one wins it.
    """

    def __init__(self, thresholds: Mapping[str, float], default_route: str) -> None:
        if default_route not in thresholds:
            raise ValueError(f"default route {default_route!r} has no threshold")
        self.thresholds = dict(thresholds)
        self.default_route = default_route

    def decide(self, candidates: Sequence[Mapping[str, float]],
               hits: Sequence[KeywordHits] = ()) -> RoutingDecision:
        if not candidates:
            return RoutingDecision(self.default_route, "no_text")
        first: RoutingDecision | None = None
        for i, scores in enumerate(candidates):
            hit = hits[i] if i < len(hits) else NO_HITS
            allowed = {r: s for r, s in scores.items() if r not in hit.excluded}
            forced = [r for r in allowed if r in hit.forced]
            ranked = sorted(allowed.items(), key=lambda kv: kv[1], reverse=True)
            if forced:
                best = max(forced, key=allowed.__getitem__)
                return RoutingDecision(best, "keyword", allowed[best], _margin(best, allowed), dict(scores))
            if not ranked:
                continue  # every route excluded: the next candidate, or the default route
            best, best_score = ranked[0]
            if best_score >= self.thresholds[best]:
                reason: Reason = "classified" if i == 0 else "context"
                return RoutingDecision(best, reason, best_score, _margin(best, allowed), dict(scores))
            if first is None:
                first = RoutingDecision(self.default_route, "below_threshold", best_score, _margin(best, allowed),
                                        dict(scores))
        return first or RoutingDecision(self.default_route, "below_threshold", scores=dict(candidates[0]))


def _margin(route: str, allowed: Mapping[str, float]) -> float | None:
    """The route's score minus the best other allowed route's."""
    others = [s for r, s in allowed.items() if r != route]
    return allowed[route] - max(others) if others else None


@dataclass(frozen=True)
class LLMTarget:
    """One LLM deployment as the ingress sees it; fixed for the life of the application."""

    llm: str  # name of the LLM config entry
    deployment: str
    configured_model: str  # what the config asks for
    served_model: str  # what actually answers (the embedded model on the CPU fallback)
    fallback: bool  # True when the CPU fallback replaced the configured model


@dataclass(frozen=True)
class RouteTarget:
    route: str
    llm: str
    deployment: str
    configured_model: str
    served_model: str
    fallback: bool


class RouteTable:
    """Which LLM answers each route, and which route an explicit ``model`` name means."""

    def __init__(self, targets: Sequence[RouteTarget], default_route: str) -> None:
        self.targets = {t.route: t for t in targets}
        self.default_route = default_route
        self._aliases: dict[str, str] = {}
        # Route names win; a model id that several routes share means the default route if it is one of them.
        ordered = sorted(targets, key=lambda t: t.route != default_route)
        for t in ordered:
            for alias in (t.configured_model, t.served_model, t.llm):
                self._aliases.setdefault(alias, t.route)
        for t in targets:
            self._aliases[t.route] = t.route

    @classmethod
    def from_config(cls, routing: RoutingConfig, llms: Sequence[LLMTarget]) -> RouteTable:
        """The table for a routing block; a ValueError if a route names an LLM the application does not serve."""
        by_name = {t.llm: t for t in llms}
        check_route_llms(routing, list(by_name))
        targets = [RouteTarget(r.name, r.llm, by_name[r.llm].deployment, by_name[r.llm].configured_model,
                               by_name[r.llm].served_model, by_name[r.llm].fallback) for r in routing.routes]
        return cls(targets, routing.default_route)

    def explicit_route(self, model: str) -> str:
        """The route a request that names ``model`` goes to, without classification."""
        try:
            return self._aliases[model]
        except KeyError:
            known = ", ".join(["auto", *self.targets])
            raise OpenAIError(
                404, f"The model {model!r} does not exist. Use 'auto' (or omit 'model') to route by content, "
                f"or one of: {known}.", code="model_not_found", param="model",
            ) from None

    def __getitem__(self, route: str) -> RouteTarget:
        return self.targets[route]

    def __contains__(self, route: object) -> bool:
        return route in self.targets
