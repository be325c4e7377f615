"""The routing policy and the route table, without a model or a cluster."""

from __future__ import annotations

import re

import numpy as np
import pytest

from serve_app.api.errors import OpenAIError
from serve_app.config.graph import plan
from serve_app.config.schema import RouterConfig, RoutingConfig
from serve_app.dispatch.routes import RouteTable
from serve_app.routing.examples import ExampleIndex
from serve_app.routing.policy import RoutingPolicy

POLICY = RoutingPolicy({"code": 0.3, "math": 0.4, "general": 0.3}, "general")


def test_best_route_above_its_threshold_wins():
    d = POLICY.decide([{"code": 0.6, "math": 0.2, "general": 0.1}])
    assert (d.route, d.reason, d.score) == ("code", "classified", 0.6)


def test_below_threshold_falls_back_to_default_with_its_score():
    d = POLICY.decide([{"code": 0.1, "math": 0.35, "general": 0.2}])  # math needs 0.4
    assert (d.route, d.reason, d.score) == ("general", "below_threshold", 0.35)


def test_conversation_context_decides_a_vague_follow_up():
    d = POLICY.decide([{"code": 0.2, "math": 0.1, "general": 0.15}, {"code": 0.5, "math": 0.1, "general": 0.1}])
    assert (d.route, d.reason) == ("code", "context")


def test_no_text_goes_to_default():
    d = POLICY.decide([])
    assert (d.route, d.reason, d.score) == ("general", "no_text", None)


def test_example_index_scores_match_a_per_route_loop():
    rng = np.random.default_rng(0)
    def unit(n: int) -> np.ndarray:
        v = rng.normal(size=(n, 8))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    examples, queries = [unit(7), unit(2), unit(5)], unit(4)
    index = ExampleIndex(["a", "b", "c"], examples, top_k=3)
    for k in (1, 3, 5):
        expected = [[np.sort(q @ e.T)[::-1][:min(k, len(e))].mean() for e in examples] for q in queries]
        np.testing.assert_allclose(index.score_matrix(queries, k), expected, rtol=1e-5)
    assert index.score_matrix(np.zeros((0, 8))).shape == (0, 3)


def _router(router_args, routing_args) -> RouteTable:
    routing = RoutingConfig.model_validate(routing_args)
    return RouteTable(routing, plan(RouterConfig.model_validate(router_args), "cpu").llms)


def test_explicit_names_route_without_classification(router_args, routing_args):
    router = _router(router_args, routing_args)
    assert router.explicit_route("math") == "math"
    assert router.explicit_route("deepseek-ai/deepseek-coder-1.3b-instruct") == "code"
    # A served name shared by every route (the CPU fallback) means the default route.
    assert router.explicit_route("SmolLM2-135M-Instruct") == "general"
    assert {r: t.deployment for r, t in router.targets.items()} == {
        "code": "llm-code", "math": "llm-math", "general": "llm-general"}


def test_unknown_model_is_a_404_listing_the_choices(router_args, routing_args):
    with pytest.raises(OpenAIError) as info:
        _router(router_args, routing_args).explicit_route("gpt-9")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "auto, code, math, general" in info.value.message


def test_a_route_naming_an_unknown_llm_is_refused(router_args, routing_args):
    routes = [*routing_args["routes"][:2], {**routing_args["routes"][2], "llm": "poet"}]
    with pytest.raises(ValueError, match="names llm 'poet'"):
        _router(router_args, {**routing_args, "routes": routes})


def test_fallback_chain_defaults_to_the_default_route(router_args, routing_args):
    router = _router(router_args, routing_args)
    assert router.chain("code", explicit=False) == ["code", "general"]
    assert router.chain("general", explicit=False) == ["general"]
    assert router.chain("code", explicit=True) == ["code"]  # a named model is not redirected by default


def test_fallback_chain_follows_the_config_once_per_llm(router_args, routing_args):
    routes = [{**r, "fallbacks": {"code": ["math", "general"], "math": [], "general": ["code"]}[r["name"]]}
              for r in routing_args["routes"]]
    router = _router(router_args, {**routing_args, "routes": routes, "fallback_explicit": True})
    assert router.chain("code", explicit=True) == ["code", "math", "general"]
    assert router.chain("math", explicit=False) == ["math"]
    # Two routes answered by one LLM: once it failed for the first, it is not asked again.
    shared = [{**r, "llm": "general"} if r["name"] == "math" else r for r in routes]
    router = _router(router_args, {**routing_args, "routes": shared})
    assert router.chain("code", explicit=False) == ["code", "math"]


@pytest.mark.parametrize("fallbacks, message", [(["poetry"], "falls back to ['poetry'], which are not routes"),
                                                (["code"], "cannot fall back to itself")])
def test_fallbacks_must_name_other_routes(routing_args, fallbacks, message):
    routes = [{**routing_args["routes"][0], "fallbacks": fallbacks}, *routing_args["routes"][1:]]
    with pytest.raises(ValueError, match=re.escape(message)):
        RoutingConfig.model_validate({**routing_args, "routes": routes})


def test_tools_go_only_where_tool_calling_is_configured(router_args, routing_args):
    """GPU plan of the shipped config: only llm-general (Qwen2.5, hermes) calls tools."""
    routing = RoutingConfig.model_validate(routing_args)
    router = RouteTable(routing, plan(RouterConfig.model_validate(router_args), "gpu").llms)
    assert router.chain("general", explicit=False, tools=True) == ["general"]
    with pytest.raises(OpenAIError) as info:
        router.chain("code", explicit=False, tools=True)
    error = info.value
    assert error.status == 400 and error.code == "tools_not_supported" and error.param == "tools"
    assert "Route 'code'" in error.message and "tool_calling of llms entry 'code'" in error.message
    assert router.chain("code", explicit=False, tools=False) == ["code", "general"]
    # On the CPU fallback every LLM serves SmolLM2 with cpu_fallback.tool_calling: tools go anywhere.
    assert _router(router_args, routing_args).chain("code", explicit=False, tools=True) == ["code", "general"]


def test_a_fallback_without_tool_calling_is_skipped_for_requests_with_tools(router_args, routing_args):
    args = {**router_args, "llms": [{**llm, "tool_calling": {"parser": "hermes"}} if llm["name"] == "code" else llm
                                    for llm in router_args["llms"]]}
    routes = [{**r, "fallbacks": ["math", "general"]} if r["name"] == "code" else r for r in routing_args["routes"]]
    routing = RoutingConfig.model_validate({**routing_args, "routes": routes})
    router = RouteTable(routing, plan(RouterConfig.model_validate(args), "gpu").llms)
    assert router.chain("code", explicit=False, tools=True) == ["code", "general"]  # math cannot call tools
    assert router.chain("code", explicit=False, tools=False) == ["code", "math", "general"]


def test_the_cpu_fallback_says_which_setting_to_change(router_args, routing_args):
    args = {**router_args, "cpu_fallback": {**router_args["cpu_fallback"], "tool_calling": None}}
    routing = RoutingConfig.model_validate(routing_args)
    router = RouteTable(routing, plan(RouterConfig.model_validate(args), "cpu").llms)
    with pytest.raises(OpenAIError, match="Set cpu_fallback.tool_calling"):
        router.chain("math", explicit=True, tools=True)


def test_each_route_carries_its_defaults(router_args, routing_args):
    router = _router(router_args, routing_args)
    assert router.defaults["math"].system_prompt and router.defaults["code"].system_prompt is None
