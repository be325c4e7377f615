"""The routing policy: from each user turn's similarity scores and keyword hits to one route for the request.

A conversation is read turn by turn, oldest first, and the route it holds after its last turn answers:

- the first turn decides alone: its best route if that clears its threshold (or a keyword forces one), else
  the default route;
- a later turn keeps the conversation's route, unless it marks a change of subject (it is then decided alone),
  a keyword forces another route, or it is confidently elsewhere: its own best route clears its threshold,
  beats the conversation's route on this turn by ``switch_margin``, and is still the route when the turn is
  read together with the one before it ("sort them by length" after a question about rivers is not code).
  A turn nearer to the follow-up examples than to any route ("shorter", "in French", "continue") never
  moves the conversation;
- a conversation held by the default route for want of a better one takes the first turn confident enough.

When the user's turns leave the request below every threshold, the system prompt decides if it is itself
confidently one route (``with_system``). Stateless and deterministic: the same turns always give the same
route, so an agent's tool loop (whose user turns do not change) stays on one model, and turn N+1 goes where
turn N went unless the user changed the subject. Measured against the alternatives in docs/routing.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from serve_app.routing.keywords import NO_HITS, KeywordHits

# classified: the last turn decided; context: the conversation before it did.
# system: the system prompt decided, the user's turns having left the request below every threshold.
Reason = Literal["classified", "context", "keyword", "below_threshold", "no_text", "explicit", "classifier_error",
                 "system"]
# Decisions that sent a request to the default route for want of a better one.
FALLBACK_REASONS = frozenset({"below_threshold", "no_text", "classifier_error"})


@dataclass(frozen=True)
class RoutingDecision:
    route: str
    reason: Reason
    score: float | None = None  # the winning route's score (the best score when below every threshold)


class Unread:
    """A turn's reading with the turn before it, not embedded yet: it is embedded only if the decision needs it."""

    def __repr__(self) -> str:
        return "UNREAD"


UNREAD = Unread()


class PairUnread(Exception):  # noqa: N818 (a request for more input, not an error)
    """The decision needs turn ``index`` read with the turn before it (``Turn.with_previous``) to go on."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass(frozen=True)
class Turn:
    """One user turn as the policy sees it."""

    scores: Mapping[str, float]  # each route's similarity
    hits: KeywordHits = NO_HITS
    follow_up: float = float("-inf")  # similarity to the follow-up examples
    switched: bool = False  # it marks a change of subject: decided alone
    # The scores of this turn read with the one before it; UNREAD until the decision asks for them (PairUnread).
    with_previous: Mapping[str, float] | Unread | None = None


class RoutingPolicy:
    def __init__(self, thresholds: Mapping[str, float], default_route: str, switch_margin: float = 0.15) -> None:
        if default_route not in thresholds:
            raise ValueError(f"default route {default_route!r} has no threshold")
        self.thresholds = dict(thresholds)
        self.default_route = default_route
        self.switch_margin = switch_margin

    def alone(self, turn: Turn) -> RoutingDecision:
        """One turn by itself: a forced route, else the best-scoring one if it clears its threshold, else default."""
        allowed = {r: s for r, s in turn.scores.items() if r not in turn.hits.excluded}
        forced = [r for r in allowed if r in turn.hits.forced_not_excluded]
        if forced:
            best = max(forced, key=allowed.__getitem__)
            return RoutingDecision(best, "keyword", allowed[best])
        if not allowed:  # every route excluded
            return RoutingDecision(self.default_route, "below_threshold")
        best = max(allowed, key=allowed.__getitem__)
        if allowed[best] >= self.thresholds[best]:
            return RoutingDecision(best, "classified", allowed[best])
        return RoutingDecision(self.default_route, "below_threshold", allowed[best])

    def forced(self, hits: KeywordHits) -> RoutingDecision | None:
        """The route a turn's keywords give it whatever its scores: the one route forced and not excluded
        (several forced ones are told apart by their scores). A last turn's decides the conversation, so such a
        request needs no embedding."""
        forced = [r for r in self.thresholds if r in hits.forced_not_excluded]
        return RoutingDecision(forced[0], "keyword") if len(forced) == 1 else None

    def decide(self, turns: Sequence[Turn]) -> RoutingDecision:
        """The route for a conversation's user turns, oldest first. Raises ``PairUnread`` where it needs a turn's
        ``with_previous`` that is still ``UNREAD``: the caller embeds it and asks again."""
        if not turns:
            return RoutingDecision(self.default_route, "no_text")
        held = self.alone(turns[0])
        for index, turn in enumerate(turns[1:], start=1):
            held = self._next(held, turn, index)
        return held

    def _next(self, held: RoutingDecision, turn: Turn, index: int) -> RoutingDecision:
        own = self.alone(turn)
        if turn.switched or own.reason == "keyword":
            return own
        if own.reason == "below_threshold" or turn.follow_up >= max(turn.scores.values(), default=float("-inf")):
            return _kept(held)
        if own.route == held.route:  # the turn agrees: it decided
            return own
        if held.reason in FALLBACK_REASONS:  # held by the default route for want of a better one
            return own
        if own.score - turn.scores.get(held.route, 0.0) < self.switch_margin:
            return _kept(held)
        return own if self._still_elsewhere(own, turn, index) else _kept(held)

    def with_system(self, decision: RoutingDecision, scores: Mapping[str, float]) -> RoutingDecision:
        """The system prompt's best route, where the user's turns left the request on the default route for want
        of a better one and it clears its threshold: an agent's task often lives there ("You are a coding agent
        working in the user's repository") while its user turns say "continue". Never over a user's turn."""
        if decision.reason != "below_threshold" or not scores:
            return decision
        best = max(scores, key=scores.__getitem__)
        return RoutingDecision(best, "system", scores[best]) if scores[best] >= self.thresholds[best] else decision

    def _still_elsewhere(self, own: RoutingDecision, turn: Turn, index: int) -> bool:
        """Whether the turn read with the one before it decides the same route as the turn alone."""
        if turn.with_previous is None:
            return True
        if isinstance(turn.with_previous, Unread):
            raise PairUnread(index)
        return self.alone(Turn(turn.with_previous, turn.hits)).route == own.route


def _kept(held: RoutingDecision) -> RoutingDecision:
    """The conversation's route, now decided by the conversation (its fallback reasons stay what they are)."""
    return held if held.reason in FALLBACK_REASONS else RoutingDecision(held.route, "context", held.score)
