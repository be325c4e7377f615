"""Routing updates on a running replica (no cluster): applied when valid, refused and survived when not."""

from __future__ import annotations

import copy
import logging

import pytest

from serve_app.live_routing import LiveRouting, RoutingUpdateError
from serve_app.routing import LLMTarget, RouteTable

LLMS = [LLMTarget(name, f"llm-{name}", f"org/{name}", "SmolLM2-135M-Instruct", True) for name in ("code", "math",
                                                                                                    "general")]


def _table(routing) -> RouteTable:
    return RouteTable.from_config(routing, LLMS)


def test_first_routing_must_be_valid(routing_args):
    live = LiveRouting("Ingress")
    with pytest.raises(RoutingUpdateError, match="has no routing block"):
        live.require()
    with pytest.raises(RoutingUpdateError, match=r"Ingress: invalid routing block: routes.0.exampels"):
        live.apply({**routing_args, "routes": [{**routing_args["routes"][0], "exampels": []}]}, _table)


def test_valid_update_applies_and_bad_one_keeps_the_last_good(routing_args, caplog):
    live = LiveRouting("Ingress")
    table = live.apply(routing_args, _table)
    assert list(table.targets) == ["code", "math", "general"] and live.status()["refused"] is None
    first = live.version

    updated = copy.deepcopy(routing_args)
    updated["routes"].append({"name": "creative", "llm": "general", "examples": ["Write a poem about rain"]})
    table = live.apply(updated, _table)
    assert "creative" in table and table["creative"].deployment == "llm-general"
    assert live.version != first
    second = live.version

    # A typo, and a route naming an LLM the application does not serve: refused, the replica serves on.
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert live.apply({**updated, "treshold": 0.3}, _table) is None
        assert live.apply({**updated, "routes": [*updated["routes"][:3], {**updated["routes"][3], "llm": "poet"}]},
                          _table) is None
    assert live.version == second
    assert "names llm 'poet'" in live.status()["refused"]
    assert "refused a routing update and still serves routing " + second in caplog.text
    live.require()  # still healthy

    assert live.apply(routing_args, _table) is not None  # a good update clears the refusal
    assert live.status() == {"version": first, "refused": None}


def test_route_table_serves_every_route_through_its_llm(app_config):
    table = RouteTable.from_config(app_config.routing, LLMS)
    assert {r: t.deployment for r, t in table.targets.items()} == {
        "code": "llm-code", "math": "llm-math", "general": "llm-general"}
    assert table.explicit_route("org/math") == "math" and table.explicit_route("SmolLM2-135M-Instruct") == "general"
