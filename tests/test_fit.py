"""The encoder fitted to the routes (serve_app.tools.fit): its training pairs, and a real, tiny fit on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from serve_app.config.schema import AppConfig
from serve_app.embedded import EmbeddedModelError, resolve_encoder
from serve_app.routing.encoder import encode, load_encoder
from serve_app.tools import fit as fit_cli
from serve_app.tools.fit import FOLLOW_UP, contrastive_pairs, labelled_examples

ROUTES = {
    "code": ["Write a Python function that reverses a list", "Fix this SQL query", "Why does my loop never end?",
             "Write a bash script that renames files"],
    "math": ["Solve 2x + 3 = 11", "What is the derivative of x^3?", "How many ways can 5 people sit in a row?",
             "Find the area of a circle of radius 2"],
    "general": ["What is the capital of Peru?", "Write a poem about autumn", "How do I stay calm before a job "
                "interview?", "Who painted the Mona Lisa?"],
}


@pytest.fixture
def small_config(router_args, routing_args) -> AppConfig:
    routes = [{**r, "examples": ROUTES[r["name"]]} for r in routing_args["routes"]]
    thread = {**routing_args.get("thread", {}), "follow_up": ["shorter please", "in French", "continue"]}
    return AppConfig.model_validate({"router": {**router_args, "classifier": {
        **router_args["classifier"], "model": "embedded:all-MiniLM-L6-v2", "backend": "torch"}},
        "routing": {**routing_args, "routes": routes, "thread": thread}})


def test_examples_are_the_routes_and_the_follow_ups(small_config):
    examples = labelled_examples(small_config, [("Sort a dict by value", "code")])
    assert examples[:4] == [(t, "code") for t in ROUTES["code"]]
    assert examples[-4:-1] == [("shorter please", FOLLOW_UP), ("in French", FOLLOW_UP), ("continue", FOLLOW_UP)]
    assert examples[-1] == ("Sort a dict by value", "code")


def test_pairs_match_within_a_class_and_differ_across(small_config):
    examples = labelled_examples(small_config)
    label = dict(examples)
    pairs = contrastive_pairs(examples, pairs=3, seed=0)
    assert len(pairs) == 2 * 3 * len(examples)
    assert all((label[a] == label[b]) == (score == 1.0) and a != b for a, b, score in pairs)
    assert pairs == contrastive_pairs(examples, pairs=3, seed=0)  # the same seed, the same pairs


def test_a_fit_pulls_each_route_together_and_is_kept_until_its_inputs_change(small_config, tmp_path, capsys):
    out = tmp_path / "fitted"
    facts = fit_cli.fit(small_config, out, "embedded:all-MiniLM-L6-v2", pairs=4, epochs=2)
    assert facts["examples"] == 15 and facts["classes"] == [FOLLOW_UP, "code", "general", "math"]
    assert json.loads((out / "fit.json").read_text())["digest"] == facts["digest"]
    assert not (tmp_path / "fitted.partial").exists()

    def separation(model: str) -> float:
        """Mean similarity within a route minus across routes, on the examples."""
        encoder = load_encoder(model, "torch")
        vectors = {r: encode(encoder, texts) for r, texts in ROUTES.items()}
        within = np.mean([(v @ v.T)[np.triu_indices(len(v), 1)].mean() for v in vectors.values()])
        across = np.mean([(vectors[a] @ vectors[b].T).mean() for a in ROUTES for b in ROUTES if a < b])
        return within - across

    assert separation(str(out)) > separation("embedded:all-MiniLM-L6-v2") + 0.05
    again = fit_cli.fit(small_config, out, "embedded:all-MiniLM-L6-v2", pairs=4, epochs=2)
    assert again.get("up_to_date") and again["digest"] == facts["digest"]


def test_an_unfitted_model_says_how_to_fit_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMANTIC_ROUTER_CACHE", str(tmp_path))
    with pytest.raises(EmbeddedModelError, match=r"python -m serve_app.tools.fit"):
        resolve_encoder("fitted:all-MiniLM-L6-v2")


def test_the_cli_needs_a_target_for_a_plain_model(small_config, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"applications": [{
        "name": "router", "route_prefix": "/", "import_path": "deployments.builder:build_app",
        "args": small_config.router.model_dump(mode="json"),
        "deployments": [{"name": "Ingress", "user_config": small_config.routing.model_dump(mode="json")}]}]}))
    assert fit_cli.main(["--config", str(path)]) == 1
    assert "say where to write with --out" in capsys.readouterr().err
