"""Keyword rules: regular expressions that force a route or rule it out, before similarity decides.

Patterns are case-insensitive regular expressions that match whole words only: "api" does not
match inside "capital". A match may not begin or end in the middle of a word, so a pattern that
starts or ends with a symbol (```, c++) still works next to letters. ``^`` and ``$`` match at line
boundaries, so ``^\\s*def \\w+\\(`` finds a code line anywhere in a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Either side: no word character outside, or the match itself does not begin/end with one.
_START = r"(?:(?<!\w)|(?!\w))"
_END = r"(?:(?!\w)|(?<!\w))"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(f"{_START}(?:{pattern}){_END}", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class KeywordHits:
    forced: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()

    @property
    def forced_not_excluded(self) -> frozenset[str]:
        """The routes a keyword can send the turn to: an exclude rule outweighs a force rule."""
        return self.forced - self.excluded


NO_HITS = KeywordHits()


class KeywordMatcher:
    """Which routes a text forces or excludes, from each route's ``keywords`` patterns."""

    def __init__(self, force: Mapping[str, Sequence[str]], exclude: Mapping[str, Sequence[str]]) -> None:
        self._force = {r: [compile_pattern(p) for p in ps] for r, ps in force.items() if ps}
        self._exclude = {r: [compile_pattern(p) for p in ps] for r, ps in exclude.items() if ps}

    def __bool__(self) -> bool:
        return bool(self._force or self._exclude)

    def hits(self, text: str) -> KeywordHits:
        if not self:
            return NO_HITS
        return KeywordHits(_matching(self._force, text), _matching(self._exclude, text))


def _matching(rules: Mapping[str, list[re.Pattern[str]]], text: str) -> frozenset[str]:
    return frozenset(route for route, patterns in rules.items() if any(p.search(text) for p in patterns))
