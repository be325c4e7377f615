"""Keyword rules: whole-word regular expressions that force or exclude a route, without a model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.api.errors import describe_error
from serve_app.config.schema import RouteConfig, RoutingConfig
from serve_app.routing.keywords import KeywordHits, KeywordMatcher, compile_pattern
from serve_app.routing.policy import RoutingPolicy, Turn

POLICY = RoutingPolicy({"code": 0.3, "math": 0.3, "general": 0.3}, "general")


@pytest.mark.parametrize("pattern, text, hit", [
    ("api", "What is the capital of Australia?", False),  # never a substring of a word
    ("api", "How do I call the API from Python?", True),
    ("api", "api-key rotation", True),
    (r"c\+\+", "Is C++ faster than Java?", True),  # a pattern ending in a symbol still matches
    (r"c\+\+", "abc++", False),
    ("```", "```python\nprint(1)\n```", True),
    ("python", "PYTHON question", True),  # case-insensitive
    ("(?-i:SELECT)", "select a gift for my mother", False),  # (?-i:...) is case-sensitive
    (r"(?-i:^\s*def\s+\w+\s*\()", "Explain this:\n    def area(r):\n        return 3.14 * r * r", True),
    (r"(?-i:^\s*def\s+\w+\s*\()", "Define the word serendipity", False),
])
def test_patterns_match_whole_words_only(pattern, text, hit):
    assert bool(compile_pattern(pattern).search(text)) is hit


def test_shipped_rules(routing_args):
    config = RoutingConfig.model_validate(routing_args)
    matcher = KeywordMatcher({r.name: r.keywords.force for r in config.routes},
                             {r.name: r.keywords.exclude for r in config.routes})
    assert matcher.hits(r"Find $x$ if $\frac12 x + 3 = 7$.").forced == {"math"}
    assert matcher.hits("Why does this fail?\n```\nx = [1, 2\n```").forced == {"code"}
    assert matcher.hits("What is the capital of Australia?") == KeywordHits()
    assert matcher.hits("How much does a 5 dollar coffee cost after a $1 discount and $2 tip?").forced == set()


def test_forced_route_wins_over_scores_and_threshold():
    d = POLICY.decide([Turn({"code": 0.1, "math": 0.5, "general": 0.2}, KeywordHits(forced=frozenset({"code"})))])
    assert (d.route, d.reason, d.score) == ("code", "keyword", 0.1)


def test_excluded_route_cannot_win():
    d = POLICY.decide([Turn({"code": 0.2, "math": 0.6, "general": 0.4}, KeywordHits(excluded=frozenset({"math"})))])
    assert (d.route, d.reason, d.score) == ("general", "classified", 0.4)
    d = POLICY.decide([Turn({"code": 0.2, "math": 0.6, "general": 0.1}, KeywordHits(excluded=frozenset({"math"})))])
    assert (d.route, d.reason) == ("general", "below_threshold")


def test_exclusion_beats_force_and_all_excluded_falls_back():
    both = KeywordHits(forced=frozenset({"math"}), excluded=frozenset({"math"}))
    assert POLICY.decide([Turn({"code": 0.5, "math": 0.6, "general": 0.1}, both)]).route == "code"
    everything = KeywordHits(excluded=frozenset({"code", "math", "general"}))
    d = POLICY.decide([Turn({"code": 0.5, "math": 0.6, "general": 0.1}, everything)])
    assert (d.route, d.reason) == ("general", "below_threshold")


def test_keyword_in_the_conversation_decides_a_vague_follow_up():
    vague = {"code": 0.1, "math": 0.1, "general": 0.2}
    d = POLICY.decide([Turn(vague, KeywordHits(forced=frozenset({"code"}))), Turn(vague)])
    assert (d.route, d.reason) == ("code", "context")


def _with_keywords(routing_args, keywords) -> dict:
    routes = [dict(r) for r in routing_args["routes"]]
    routes[0] = {**routes[0], "keywords": keywords}
    return {**routing_args, "routes": routes}


def test_bad_patterns_fail_validation_naming_them(routing_args):
    with pytest.raises(ValidationError) as info:
        RoutingConfig.model_validate(_with_keywords(routing_args, {"force": ["(unclosed"]}))
    assert "routes.0.keywords.force" in describe_error(info.value) and "(unclosed" in describe_error(info.value)
    with pytest.raises(ValidationError):
        RoutingConfig.model_validate(_with_keywords(routing_args, {"exclude": [" "]}))
    with pytest.raises(ValidationError, match="Extra inputs"):
        RoutingConfig.model_validate(_with_keywords(routing_args, {"forced": ["x"]}))


def test_rules_survive_the_user_config_round_trip(routing_args):
    # Serve sends the routing block to the replicas as JSON (user_config); they validate it again.
    routes = RoutingConfig.model_validate(routing_args).routes
    assert [RouteConfig(**r.model_dump()) for r in routes] == routes
    assert routes[0].keywords.force
