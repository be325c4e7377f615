"""The routing policy: from similarity scores and keyword hits to a route."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from serve_app.routing.keywords import NO_HITS, KeywordHits

Reason = Literal["classified", "context", "keyword", "below_threshold", "no_text", "explicit", "classifier_error"]
# Decisions that sent a request to the default route for want of a better one.
FALLBACK_REASONS = frozenset({"below_threshold", "no_text", "classifier_error"})


@dataclass(frozen=True)
class RoutingDecision:
    route: str
    reason: Reason
    score: float | None = None  # the winning route's score (the best score when below every threshold)


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
        below: RoutingDecision | None = None
        for i, scores in enumerate(candidates):
            hit = hits[i] if i < len(hits) else NO_HITS
            allowed = {r: s for r, s in scores.items() if r not in hit.excluded}
            forced = [r for r in allowed if r in hit.forced]
            if forced:
                best = max(forced, key=allowed.__getitem__)
                return RoutingDecision(best, "keyword", allowed[best])
            if not allowed:
                continue  # every route excluded: the next candidate, or the default route
            best = max(allowed, key=allowed.__getitem__)
            if allowed[best] >= self.thresholds[best]:
                return RoutingDecision(best, "classified" if i == 0 else "context", allowed[best])
            below = below or RoutingDecision(self.default_route, "below_threshold", allowed[best])
        return below or RoutingDecision(self.default_route, "below_threshold")
