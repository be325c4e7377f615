"""Which deployments count as empty: only one that lost its serving replicas (serve_app/llm/replicas.py)."""

from __future__ import annotations

from serve_app.llm.replicas import ReplicaView


def test_a_deployment_that_lost_every_replica_is_empty():
    view = ReplicaView()
    view.update({"llm-code": {"RUNNING": 1}, "llm-math": {"RUNNING": 2}})
    view.update({"llm-code": {"STARTING": 1}, "llm-math": {"RUNNING": 1, "STOPPING": 1}})  # code's replica died
    assert not view.has_replica("llm-code")
    assert view.has_replica("llm-math")
    view.update({"llm-code": {"RUNNING": 1}, "llm-math": {"RUNNING": 1}})  # restarted
    assert view.has_replica("llm-code")


def test_a_deployment_still_starting_is_waited_for_not_refused():
    view = ReplicaView()
    assert view.has_replica("llm-code")  # nothing read yet
    view.update({"llm-code": {"STARTING": 1}})  # the graph's first minute: its requests queue, as in Serve
    assert view.has_replica("llm-code")


def test_a_replica_reconfigured_in_place_still_serves():
    view = ReplicaView()
    view.update({"llm-code": {"RUNNING": 1}})
    view.update({"llm-code": {"UPDATING": 1}})  # a new max_ongoing_requests or user_config being applied
    assert view.has_replica("llm-code")


def test_an_unreadable_status_counts_every_deployment_as_serving():
    view = ReplicaView()
    view.update({"llm-code": {"RUNNING": 1}})
    view.update({"llm-code": {}})
    assert not view.has_replica("llm-code")
    view.forget()
    assert view.has_replica("llm-code")
