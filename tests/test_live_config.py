"""Configuration updates on a running replica (no cluster): applied when valid, refused and survived when not."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest

from serve_app.config.graph import plan
from serve_app.config.live import ConfigUpdateError, LiveConfig
from serve_app.config.schema import ClassifierBatching, RouterConfig, RoutingConfig
from serve_app.dispatch.routes import RouteTable


@pytest.fixture(scope="module")
def build(router_args):
    llms = plan(RouterConfig.model_validate(router_args), "cpu").llms

    async def router(routing: RoutingConfig) -> RouteTable:  # as the Ingress compiles one, minus the classifier hop
        return RouteTable(routing, llms)

    return router


def _apply(live, user_config, build):
    return asyncio.run(live.apply(user_config, build))


def test_first_routing_must_be_valid(routing_args, build):
    live = LiveConfig("Ingress", RoutingConfig, "routing block")
    with pytest.raises(ConfigUpdateError, match="has no routing block"):
        live.require("set its user_config")
    with pytest.raises(ConfigUpdateError, match=r"Ingress: invalid routing block: routes.0.exampels"):
        _apply(live, {**routing_args, "routes": [{**routing_args["routes"][0], "exampels": []}]}, build)


def test_valid_update_applies_and_bad_one_keeps_the_last_good(routing_args, build, caplog):
    live = LiveConfig("Ingress", RoutingConfig, "routing block")
    router = _apply(live, routing_args, build)
    assert list(router.targets) == ["code", "math", "general"] and live.status()["refused"] is None
    first = live.version

    updated = copy.deepcopy(routing_args)
    updated["routes"].append({"name": "creative", "llm": "general", "examples": ["Write a poem about rain"]})
    router = _apply(live, updated, build)
    assert router.targets["creative"].deployment == "llm-general"
    assert live.version != first
    second = live.version

    # A typo, and a route naming an LLM the application does not serve: refused, the replica serves on.
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert _apply(live, {**updated, "treshold": 0.3}, build) is None
        assert _apply(live, {**updated, "routes": [*updated["routes"][:3], {**updated["routes"][3], "llm": "poet"}]},
                      build) is None
    assert live.version == second
    assert "names llm 'poet'" in live.status()["refused"]
    assert "refused an update of its routing block and still serves " + second in caplog.text
    live.require("unused")  # still healthy

    assert _apply(live, routing_args, build) is not None  # a good update clears the refusal
    assert live.status() == {"version": first, "refused": None}


def test_classifier_batching_is_live_and_refuses_the_routing_block(routing_args):
    live = LiveConfig("Classifier", ClassifierBatching, "batching settings")

    async def keep(batching: ClassifierBatching) -> ClassifierBatching:
        return batching

    assert _apply(live, {}, keep) == ClassifierBatching()
    assert _apply(live, {"max_batch_size": 8}, keep).max_batch_size == 8
    # The routing block's old second home: refused with where it lives now.
    assert _apply(live, routing_args, keep) is None
    assert "read from the Ingress deployment's user_config only" in live.status()["refused"]
