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
from serve_app.routing.keywords import KeywordHits
from serve_app.routing.policy import UNREAD, PairUnread, RoutingDecision, RoutingPolicy, Turn

POLICY = RoutingPolicy({"code": 0.3, "math": 0.4, "general": 0.3}, "general", switch_margin=0.15)


def _turns(*scores: dict[str, float], **fields) -> list[Turn]:
    return [Turn(s, **fields) for s in scores]


def test_best_route_above_its_threshold_wins():
    d = POLICY.decide(_turns({"code": 0.6, "math": 0.2, "general": 0.1}))
    assert (d.route, d.reason, d.score) == ("code", "classified", 0.6)


def test_below_threshold_falls_back_to_default_with_its_score():
    d = POLICY.decide(_turns({"code": 0.1, "math": 0.35, "general": 0.2}))  # math needs 0.4
    assert (d.route, d.reason, d.score) == ("general", "below_threshold", 0.35)


def test_no_text_goes_to_default():
    d = POLICY.decide([])
    assert (d.route, d.reason, d.score) == ("general", "no_text", None)


def test_a_vague_follow_up_keeps_the_conversations_route():
    d = POLICY.decide(_turns({"code": 0.5, "math": 0.1, "general": 0.1}, {"code": 0.2, "math": 0.1, "general": 0.15}))
    assert (d.route, d.reason, d.score) == ("code", "context", 0.5)


def test_a_confident_follow_up_stays_unless_it_is_confidently_elsewhere():
    chemistry = {"code": 0.1, "math": 0.1, "general": 0.5}
    # "undo this process": code by a little on its own, not by the margin: the conversation keeps general.
    assert POLICY.decide(_turns(chemistry, {"code": 0.4, "math": 0.1, "general": 0.3})).route == "general"
    # "write that as a Python function": code by far more than the margin.
    d = POLICY.decide(_turns(chemistry, {"code": 0.6, "math": 0.1, "general": 0.2}))
    assert (d.route, d.reason) == ("code", "classified")
    # A turn that agrees with the conversation decided it.
    assert POLICY.decide(_turns(chemistry, {"code": 0.1, "math": 0.1, "general": 0.45})).reason == "classified"


def test_a_turn_moves_the_conversation_only_if_it_still_points_there_read_with_the_turn_before():
    rivers = {"code": 0.1, "math": 0.2, "general": 0.6}
    sort_them = {"code": 0.6, "math": 0.2, "general": 0.1}  # "sort them by length": code on its own
    d = POLICY.decide([Turn(rivers), Turn(sort_them, with_previous={"code": 0.25, "math": 0.2, "general": 0.5})])
    assert (d.route, d.reason) == ("general", "context")
    # "now write a function that sorts any list": code read alone and read with the rivers question.
    d = POLICY.decide([Turn(rivers), Turn(sort_them, with_previous={"code": 0.5, "math": 0.1, "general": 0.35})])
    assert (d.route, d.reason) == ("code", "classified")


def test_a_turns_pair_is_asked_for_only_where_the_turn_may_move_the_conversation():
    rivers, sort_them = {"code": 0.1, "math": 0.2, "general": 0.6}, {"code": 0.6, "math": 0.2, "general": 0.1}
    agrees, vague = {"code": 0.1, "math": 0.1, "general": 0.5}, {"code": 0.2, "math": 0.1, "general": 0.15}
    # Turns that agree, and a turn below every threshold, decide without their pairs.
    assert POLICY.decide([Turn(rivers), Turn(agrees, with_previous=UNREAD)]).reason == "classified"
    assert POLICY.decide([Turn(rivers), Turn(vague, with_previous=UNREAD)]).reason == "context"
    # A turn confidently elsewhere needs its pair: the policy names which one.
    with pytest.raises(PairUnread) as unread:
        POLICY.decide([Turn(rivers), Turn(agrees, with_previous=UNREAD), Turn(sort_them, with_previous=UNREAD)])
    assert unread.value.index == 2


def test_a_turn_nearer_the_follow_up_examples_never_moves_the_conversation():
    maths, shorter = {"code": 0.1, "math": 0.6, "general": 0.2}, {"code": 0.5, "math": 0.1, "general": 0.1}
    assert POLICY.decide([Turn(maths), Turn(shorter, follow_up=0.4)]).route == "code"
    d = POLICY.decide([Turn(maths), Turn(shorter, follow_up=0.55)])
    assert (d.route, d.reason) == ("math", "context")


def test_a_change_of_subject_is_decided_alone():
    code = {"code": 0.6, "math": 0.1, "general": 0.1}
    peru = {"code": 0.2, "math": 0.1, "general": 0.32}
    assert POLICY.decide([Turn(code), Turn(peru)]).route == "code"
    d = POLICY.decide([Turn(code), Turn(peru, switched=True)])
    assert (d.route, d.reason) == ("general", "classified")


def test_a_conversation_held_by_default_takes_the_first_confident_turn():
    vague, maths = {"code": 0.1, "math": 0.2, "general": 0.1}, {"code": 0.1, "math": 0.45, "general": 0.35}
    d = POLICY.decide(_turns(vague, maths))  # math beats general by less than the margin, but general was a default
    assert (d.route, d.reason) == ("math", "classified")
    d = POLICY.decide(_turns(vague, vague))
    assert (d.route, d.reason) == ("general", "below_threshold")


def test_the_system_prompt_decides_only_below_every_threshold():
    below = POLICY.decide(_turns({"code": 0.2, "math": 0.1, "general": 0.1}))
    coding_agent = {"code": 0.7, "math": 0.1, "general": 0.2}
    assert POLICY.with_system(below, coding_agent) == RoutingDecision("code", "system", 0.7)
    assert POLICY.with_system(below, {"code": 0.25, "math": 0.1, "general": 0.2}) == below  # not confident either
    for decided in (POLICY.decide(_turns({"code": 0.1, "math": 0.1, "general": 0.5})),  # a user's turn decided
                    POLICY.decide(_turns({"code": 0.5, "math": 0.1, "general": 0.1},
                                         {"code": 0.1, "math": 0.1, "general": 0.1})),  # the thread did
                    RoutingDecision("general", "no_text")):
        assert POLICY.with_system(decided, coding_agent) == decided


def test_keywords_force_or_exclude_on_any_turn():
    maths = {"code": 0.1, "math": 0.6, "general": 0.2}
    fenced = Turn({"code": 0.2, "math": 0.3, "general": 0.1}, KeywordHits(forced=frozenset({"code"})))
    assert POLICY.decide([Turn(maths), fenced]).reason == "keyword"
    no_math = Turn(maths, KeywordHits(excluded=frozenset({"math"})))
    assert POLICY.decide([no_math]).route == "general"


def test_a_last_turn_that_a_keyword_decides_needs_no_scores():
    fenced = KeywordHits(forced=frozenset({"code"}))
    assert POLICY.forced(fenced) == RoutingDecision("code", "keyword")
    assert POLICY.forced(KeywordHits()) is None
    assert POLICY.forced(KeywordHits(forced=frozenset({"code", "math"}))) is None  # told apart by scores
    assert POLICY.forced(KeywordHits(forced=frozenset({"code"}), excluded=frozenset({"code"}))) is None
    assert POLICY.forced(KeywordHits(forced=frozenset({"not-a-route"}))) is None
    # What the whole conversation would decide with scores, whatever the earlier turns held.
    maths = Turn({"code": 0.1, "math": 0.9, "general": 0.2})
    last = Turn({"code": 0.1, "math": 0.9, "general": 0.2}, fenced, switched=False)
    assert POLICY.decide([maths, maths, last]).route == POLICY.forced(fenced).route


def test_the_same_thread_always_gets_the_same_route():
    turns = _turns({"code": 0.5, "math": 0.2, "general": 0.1}, {"code": 0.2, "math": 0.44, "general": 0.1},
                   {"code": 0.3, "math": 0.3, "general": 0.3})
    assert len({POLICY.decide(turns) for _ in range(5)}) == 1


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
