"""One routing block compiled for deciding: from a request's user turns and their embeddings to a route.

The ingress builds a ``Decider`` from each routing block it accepts (with the route table that says which
LLM answers each route, serve_app/dispatch/routes.py) and swaps both in one assignment, so a request is
decided by exactly one block from start to end. The offline tools (eval, calibrate) build the very same
one, with the examples embedded in-process by the same model, and need nothing about the LLMs.

Embedding happens between the steps (the classifier's, in the ingress or its own deployment, or the tools'
in-process): ``read`` turns the user's turns into the texts to embed; a ``Reading`` then takes the turns'
embeddings and asks, one text at a time, for what else the decision needs: a turn read with the one before it,
only where that turn may move the conversation elsewhere, and the system prompt, only where the turns leave the
request below every threshold. Most requests need neither, so a request embeds its turns and nothing more.
The offline tools that score many settings at once embed everything in one call (``Thread.embedded``) and
``decide`` on all of it: the same decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from serve_app.config.schema import RoutingConfig
from serve_app.routing.examples import ExampleIndex
from serve_app.routing.keywords import KeywordMatcher, compile_pattern
from serve_app.routing.policy import UNREAD, PairUnread, RoutingDecision, RoutingPolicy, Turn

FOLLOW_UP = "<follow-up>"  # the follow-up examples' row in the index: never a route name


def examples_of(config: RoutingConfig) -> list[str]:
    """Every route's examples, route after route, then the follow-up examples: the order ``Decider`` expects."""
    return [example for route in config.routes for example in route.examples] + list(config.thread.follow_up)


@dataclass(frozen=True)
class Thread:
    """The user's turns as the decision reads them, oldest first."""

    texts: tuple[str, ...]  # a turn that changes the subject, from its marker on
    switched: tuple[bool, ...]
    system: str = ""  # the system prompt: embedded only when the user's turns leave the request undecided

    @property
    def paired(self) -> tuple[str, ...]:
        """Each later turn read with the turn before it (newest first): one per turn after the first."""
        return tuple(f"{self.texts[i]}\n{self.texts[i - 1]}" for i in range(1, len(self.texts)))

    @property
    def embedded(self) -> tuple[str, ...]:
        """What the classifier embeds for this thread, in the order ``Decider.decide`` reads the rows."""
        return self.texts + self.paired


class Decider:
    def __init__(self, config: RoutingConfig, example_embeddings: np.ndarray) -> None:
        routes = config.routes
        sizes = [len(r.examples) for r in routes] + ([len(config.thread.follow_up)] if config.thread.follow_up else [])
        groups = np.split(example_embeddings, np.cumsum(sizes)[:-1])
        names = [r.name for r in routes] + ([FOLLOW_UP] if config.thread.follow_up else [])
        self.config = config
        self.routes = [r.name for r in routes]
        self.index = ExampleIndex(names, groups, config.top_k)
        self.keywords = KeywordMatcher({r.name: r.keywords.force for r in routes},
                                       {r.name: r.keywords.exclude for r in routes})
        self.policy = RoutingPolicy({r.name: config.threshold if r.threshold is None else r.threshold for r in routes},
                                    config.default_route, config.thread.switch_margin)
        self._switch = [compile_pattern(p) for p in config.thread.switch]
        self._strip = [re.compile(p, re.IGNORECASE) for p in config.thread.strip]

    @property
    def default_route(self) -> str:
        return self.config.default_route

    def read(self, turns: Sequence[str], system: str = "") -> Thread:
        """The texts to embed for a request's user turns (oldest first, blank ones already left out), and its
        system prompt (read only if the turns decide nothing: ``system_to_read``)."""
        texts, switched = [], []
        for turn in turns:
            for pattern in self._strip:
                turn = pattern.sub(" ", turn)
            turn = turn.strip()
            if not turn:  # only what a framework added: nothing the user wrote
                continue
            rest = self._after_switch(turn) if texts else None
            texts.append(rest or turn)
            switched.append(rest is not None)
        return Thread(tuple(texts), tuple(switched), system.strip())

    def _after_switch(self, text: str) -> str | None:
        """What follows the last change-of-subject marker (the whole turn if nothing does); None without one."""
        ends = [m.end() for pattern in self._switch for m in pattern.finditer(text)]
        if not ends:
            return None
        return text[max(ends):].lstrip(" \t\n:;,.!?-\u2013\u2014").strip() or text

    def turns(self, thread: Thread, embeddings: np.ndarray, top_k: int | None = None) -> list[Turn]:
        """Each turn's route scores, follow-up similarity and keyword hits: what the policy decides on.

        ``embeddings`` are unit-norm rows: of ``thread.embedded`` (the turns and their pairs), or of
        ``thread.texts`` alone, when each later turn's pair is left ``UNREAD`` until the policy asks for it.
        """
        rows = self.index.scores(embeddings, top_k)
        n = len(thread.texts)
        pairs = [self._route_scores(row) for row in rows[n:]] or [UNREAD] * (n - 1)
        paired = [None, *pairs]
        return [Turn({r: row[r] for r in self.routes}, self.keywords.hits(text), row.get(FOLLOW_UP, float("-inf")),
                     switched, with_previous)
                for text, switched, row, with_previous in zip(thread.texts, thread.switched, rows[:n], paired)]

    def forced(self, thread: Thread) -> RoutingDecision | None:
        """The decision when the last turn's keyword rules make it alone (a fenced code block): then nothing is
        embedded, and the decision carries no score."""
        return self.policy.forced(self.keywords.hits(thread.texts[-1])) if thread.texts else None

    def decide(self, thread: Thread, embeddings: np.ndarray) -> RoutingDecision:
        """The route for a request's thread and the unit-norm embeddings of all of ``thread.embedded``, without
        the system prompt's step (the offline tools)."""
        if not thread.texts:
            return RoutingDecision(self.default_route, "no_text")
        return self.policy.decide(self.turns(thread, embeddings))

    def reading(self, thread: Thread, turn_embeddings: np.ndarray) -> Reading:
        """The decision for ``thread`` from its turns' unit-norm embeddings (rows of ``thread.texts``), asking for
        more texts only where it needs them (the serving path)."""
        return Reading(self, thread, self.turns(thread, turn_embeddings))

    def system_to_read(self, thread: Thread, decision: RoutingDecision) -> str | None:
        """The system prompt to embed next, when the user's turns left the request below every threshold. A
        second, rare step rather than a row of every request: most requests carry a system prompt, few need it."""
        return thread.system if thread.system and decision.reason == "below_threshold" else None

    def decide_with_system(self, decision: RoutingDecision, embedding: np.ndarray) -> RoutingDecision:
        """``decision`` revised by the system prompt's unit-norm embedding (``system_to_read``)."""
        return self.policy.with_system(decision, self.scores_of(embedding))

    def scores_of(self, embedding: np.ndarray) -> dict[str, float]:
        """Each route's score of one text's unit-norm embedding."""
        [row] = self.index.scores(np.asarray(embedding).reshape(1, -1))
        return self._route_scores(row)

    def _route_scores(self, row: dict[str, float]) -> dict[str, float]:
        return {r: row[r] for r in self.routes}


class Reading:
    """One request's decision, made with as few embeddings as it needs::

        reading = decider.reading(thread, embed(thread.texts))
        while (text := reading.next_text()) is not None:
            reading.add(embed([text])[0])
        reading.decision

    ``next_text`` names a later turn read with the one before it, where the policy weighs moving the
    conversation to that turn's route, and then the system prompt, where the turns leave the request below
    every threshold. A thread whose turns agree (or one turn alone) asks for nothing more.
    """

    def __init__(self, decider: Decider, thread: Thread, turns: list[Turn]) -> None:
        self._decider, self._thread, self._turns = decider, thread, turns
        self._asked: int | str | None = None  # the pair's turn index, or "system"
        self._decision: RoutingDecision | None = None
        self._system_read = False
        self._done = False

    @property
    def decision(self) -> RoutingDecision:
        if not self._done or self._decision is None:
            raise RuntimeError("the decision is not made yet: embed each of next_text() and add() it until None")
        return self._decision

    def next_text(self) -> str | None:
        """The next text to embed and ``add``, or None when the decision is made."""
        if self._asked is not None:
            return self._asked_text()
        if self._decision is None:
            try:
                self._decision = self._decider.policy.decide(self._turns)  # no turns: no_text
            except PairUnread as unread:
                self._asked = unread.index
                return self._asked_text()
        if not self._system_read and self._decider.system_to_read(self._thread, self._decision) is not None:
            self._asked = "system"
            return self._thread.system
        self._done = True
        return None

    def add(self, embedding: np.ndarray) -> None:
        """The unit-norm embedding of the text ``next_text`` named."""
        if self._asked == "system":
            self._decision = self._decider.decide_with_system(self._decision, embedding)
            self._system_read = True
        elif isinstance(self._asked, int):
            i = self._asked
            self._turns[i] = replace(self._turns[i], with_previous=self._decider.scores_of(embedding))
        else:
            raise RuntimeError("no text was asked for")
        self._asked = None

    def _asked_text(self) -> str:
        return self._thread.system if self._asked == "system" else self._thread.paired[self._asked - 1]
