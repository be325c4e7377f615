"""The routing policy and the route table, without a model or a cluster."""

from __future__ import annotations

import pytest

from serve_app.errors import OpenAIError
from serve_app.routing import RouteTable, RouteTarget, RoutingPolicy

POLICY = RoutingPolicy({"code": 0.3, "math": 0.4, "general": 0.3}, "general")


def test_best_route_above_its_threshold_wins():
    d = POLICY.decide([{"code": 0.6, "math": 0.2, "general": 0.1}])
    assert (d.route, d.reason, d.score) == ("code", "classified", 0.6)
    assert d.margin == pytest.approx(0.4)
    assert not d.is_fallback


def test_below_threshold_falls_back_to_default_with_its_score():
    d = POLICY.decide([{"code": 0.1, "math": 0.35, "general": 0.2}])  # math needs 0.4
    assert (d.route, d.reason, d.score) == ("general", "below_threshold", 0.35)
    assert d.is_fallback


def test_conversation_context_decides_a_vague_follow_up():
    d = POLICY.decide([{"code": 0.2, "math": 0.1, "general": 0.15}, {"code": 0.5, "math": 0.1, "general": 0.1}])
    assert (d.route, d.reason) == ("code", "context")


def test_no_text_goes_to_default():
    d = POLICY.decide([])
    assert (d.route, d.reason, d.score) == ("general", "no_text", None)


def _table() -> RouteTable:
    targets = [RouteTarget(r, r, f"llm-{r}", f"org/{r}-model", "SmolLM2-135M-Instruct", True)
               for r in ("code", "math", "general")]
    return RouteTable(targets, "general")


def test_explicit_names_route_without_classification():
    table = _table()
    assert table.explicit_route("math") == "math"
    assert table.explicit_route("org/code-model") == "code"
    # A served name shared by every route (the CPU fallback) means the default route.
    assert table.explicit_route("SmolLM2-135M-Instruct") == "general"


def test_unknown_model_is_a_404_listing_the_choices():
    with pytest.raises(OpenAIError) as info:
        _table().explicit_route("gpt-9")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "auto, code, math, general" in info.value.message
