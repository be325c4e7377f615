"""One routing block compiled for deciding: from a request's user turns and their embeddings to a route.

The ingress builds a ``Decider`` from each routing block it accepts (with the route table that says which
LLM answers each route, serve_app/dispatch/routes.py) and swaps both in one assignment, so a request is
decided by exactly one block from start to end. The offline tools (eval, calibrate) build the very same
one, with the examples embedded in-process by the same model, and need nothing about the LLMs.

Embedding happens between the steps (the classifier's, in the ingress or its own deployment, or the eval
tool's in-process): ``start`` reads the user's turns and returns a ``Reading``, which asks for the texts it
needs embedded and nothing else: none where there is no text or a keyword decides, then the turns, then a turn
read with the one before it, only where that turn may move the conversation elsewhere, and the system prompt,
only where the turns leave the request below every threshold. Most requests need only their turns. The
offline tools that score many settings at once embed everything in one call (``Thread.embedded``) and
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

    def start(self, turns: Sequence[str], system: str = "") -> Reading:
        """The decision for a request's user turns (oldest first) and system prompt, asking for embeddings only
        where it needs them: the serving path, and the eval tool's (the same sequence, so eval measures it)."""
        return Reading(self, self.read(turns, system))

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

        reading = decider.start(turns, system)
        while (texts := reading.next_texts()) is not None:
            reading.add(embed(texts))  # one unit-norm row per text
        reading.decision

    ``next_texts`` asks for nothing where there is no text or a keyword decides alone (a fenced code block),
    then for the turns, then one text at a time: a later turn read with the one before it, where the policy
    weighs moving the conversation to that turn's route, and the system prompt, where the turns leave the
    request below every threshold. A thread whose turns agree (or one turn alone) asks for its turns only.
    """

    def __init__(self, decider: Decider, thread: Thread) -> None:
        self._decider, self._thread = decider, thread
        self._turns: list[Turn] = []
        self._decision = (RoutingDecision(decider.default_route, "no_text") if not thread.texts
                          else decider.forced(thread))
        self._done = self._decision is not None
        self._asked: int | str | None = None if self._done else "turns"  # a pair's turn index, or "system"
        self._system_read = False
        self.embedded = 0  # texts embedded so far: none means the classifier was not called

    @property
    def decision(self) -> RoutingDecision:
        if not self._done or self._decision is None:
            raise RuntimeError("the decision is not made yet: embed each of next_texts() and add() it until None")
        return self._decision

    def next_texts(self) -> tuple[str, ...] | None:
        """The texts to embed next and ``add``, or None when the decision is made."""
        if self._done:
            return None
        if self._asked is not None:
            return self._asked_texts()
        if self._decision is None:
            try:
                self._decision = self._decider.policy.decide(self._turns)
            except PairUnread as unread:
                self._asked = unread.index
                return self._asked_texts()
        if not self._system_read and self._decider.system_to_read(self._thread, self._decision) is not None:
            self._asked = "system"
            return (self._thread.system,)
        self._done = True
        return None

    def add(self, embeddings: np.ndarray) -> None:
        """The unit-norm embeddings of the texts ``next_texts`` named, one row each."""
        asked, self._asked = self._asked, None
        if asked == "turns":
            self._turns = self._decider.turns(self._thread, embeddings)
        elif asked == "system":
            self._decision = self._decider.decide_with_system(self._decision, embeddings[0])
            self._system_read = True
        elif isinstance(asked, int):
            self._turns[asked] = replace(self._turns[asked], with_previous=self._decider.scores_of(embeddings[0]))
        else:
            raise RuntimeError("no text was asked for")
        self.embedded += len(embeddings)

    def _asked_texts(self) -> tuple[str, ...]:
        if self._asked == "turns":
            return self._thread.texts
        return (self._thread.system,) if self._asked == "system" else (self._thread.paired[self._asked - 1],)
