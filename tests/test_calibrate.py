"""Calibration: fitted thresholds and top_k never make the file they were fitted on worse."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from serve_app.config.file import load_app_config, routing_block
from serve_app.config.schema import AppConfig
from serve_app.routing.policy import Turn
from serve_app.tools import calibrate as cal
from serve_app.tools.eval import InProcessRouter
from serve_app.tools.labelled import load_labelled
from tests.conftest import SERVE_CONFIG

ITEMS = [
    ("Write a Java method that checks whether a year is a leap year", "code"),
    ("Why does my Python loop skip every other element when I remove items?", "code"),
    ("Explain what this SQL does: SELECT * FROM users WHERE age > 30", "code"),
    ("What is the sum of the first 50 odd numbers?", "math"),
    ("A shirt costs $40 after a 20% discount. What was the original price?", "math"),
    ("Find the derivative of ln(x^2 + 1)", "math"),
    ("What are the main causes of inflation?", "general"),
    ("Write a birthday message for my grandmother", "general"),
    ("Which countries were part of the Allied powers in World War II?", "general"),
]


def _candidates(code_scores: list[float]) -> list[list[Turn]]:
    return [[Turn({"code": s, "general": 0.15})] for s in code_scores]


def test_thresholds_land_in_the_middle_of_the_best_plateau():
    # Code items score 0.30 and up, general ones at most 0.20: any code threshold in (0.20, 0.30] is perfect.
    cands = _candidates([0.30, 0.35, 0.4, 0.18, 0.2, 0.16])
    labels = ["code"] * 3 + ["general"] * 3
    fitted = cal.fit_thresholds(cands, labels, {"code": 0.0, "general": 0.5}, "general")
    assert 0.2 < fitted["code"] <= 0.3 and fitted["code"] == pytest.approx(0.25, abs=0.011)
    assert cal._measure(cands, labels, fitted, "general", ["code", "general"]) == (1.0, 1.0)


def test_the_default_routes_threshold_is_fitted_where_a_conversation_depends_on_it():
    # A first turn only weakly general (0.30) must not hold the thread against a code turn that is not ahead by
    # the margin; a clearly general one (0.70) must. So general's threshold belongs in (0.30, 0.70].
    weak_then_code = [Turn({"code": 0.1, "general": 0.30}), Turn({"code": 0.6, "general": 0.35})]
    strong_then_code = [Turn({"code": 0.1, "general": 0.70}), Turn({"code": 0.6, "general": 0.35})]
    cands, labels = [weak_then_code, strong_then_code], ["code", "general"]
    fitted = cal.fit_thresholds(cands, labels, {"code": 0.5, "general": 0.0}, "general", switch_margin=0.5)
    assert 0.3 < fitted["general"] <= 0.7 and fitted["general"] == pytest.approx(0.5, abs=0.011)
    assert cal._measure(cands, labels, fitted, "general", ["code", "general"], 0.5) == (1.0, 1.0)


def test_the_margin_is_fitted_on_the_conversations_not_diluted_by_single_requests():
    # A turn ahead by 0.40 changed the subject (must move: margin <= 0.40); one ahead by 0.15 is a follow-up that
    # reads a little like another route (must not: margin > 0.15). Among 300 single requests, which no margin
    # moves, losing either conversation costs less than the tolerance: measured on every item, any margin would do.
    switch = [Turn({"code": 0.1, "general": 0.9}), Turn({"code": 0.9, "general": 0.5})]
    follow_up = [Turn({"code": 0.9, "general": 0.1}), Turn({"code": 0.45, "general": 0.6})]
    singles = [[Turn({"code": 0.9, "general": 0.1})], [Turn({"code": 0.1, "general": 0.9})]] * 150
    cands, labels = [switch, follow_up, *singles], ["code", "code", *["code", "general"] * 150]
    thresholds = {"code": 0.3, "general": 0.3}
    margin = cal.fit_margin(cands, labels, thresholds, "general", ["code", "general"], current=0.5)
    assert 0.15 < margin <= 0.40 and margin == pytest.approx(0.30)  # the middle of 0.20 ... 0.40
    assert cal._measure(cands, labels, thresholds, "general", ["code", "general"], margin) == (1.0, 1.0)
    assert cal._measure(cands, labels, thresholds, "general", ["code", "general"], 0.5)[0] > 1 - cal.MARGIN_TOLERANCE
    # Without a conversation nothing measures the margin: it stays what it was.
    assert cal.fit_margin(singles, labels[2:], thresholds, "general", ["code", "general"], current=0.45) == 0.45


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ITEMS))
    return path


def _strict_config(router_args, routing_args) -> AppConfig:
    """The shipped routes with thresholds far too high: most requests abstain to general."""
    routes = [{**r, "threshold": 0.99} for r in routing_args["routes"]]
    return AppConfig.model_validate({"router": router_args, "routing": {**routing_args, "routes": routes}})


def test_calibration_improves_or_keeps_accuracy(router_args, routing_args, encoder, data_file):
    config = _strict_config(router_args, routing_args)
    items = load_labelled(data_file, config.routing.context_turns)
    result = cal.calibrate(InProcessRouter.from_config(config, encoder), config.routing, items, top_ks=(1, 3, 5))
    assert result.after.macro_f1 >= result.before.macro_f1 and result.after.accuracy >= result.before.accuracy
    assert result.before.accuracy < 0.7 and result.after.accuracy == 1.0
    assert set(result.after.thresholds) == {"code", "math", "general"}  # the default route's too
    assert result.after.top_k in (1, 3, 5)

    # The fitted values, put in the config, give what calibration promised.
    routes = [r.model_copy(update={"threshold": result.after.thresholds.get(r.name, r.threshold)})
              for r in config.routing.routes]
    thread = config.routing.thread.model_copy(update={"switch_margin": result.after.switch_margin})
    routing = config.routing.model_copy(update={"routes": routes, "top_k": result.after.top_k, "thread": thread})
    fitted = config.model_copy(update={"routing": routing})
    fitted_router = InProcessRouter.from_config(fitted, encoder)
    predicted = [fitted_router.classify(i.texts).route for i in items]
    assert predicted == [lab for _, lab in ITEMS]


def _comments(text: str) -> list[str]:
    """Every '#' to the end of its line, in order (a '#' inside a string counts too: it must survive as well)."""
    return re.findall(r"#.*", text)


def _edited_as_text(text: str, top_k: int, thresholds: dict[str, float]) -> str:
    """The file with top_k and the routes' existing thresholds replaced on their own lines: what --write should give."""
    text, n = re.subn(r"(?m)^( +top_k: )\d+", rf"\g<1>{top_k}", text)
    assert n == 1
    for route, value in thresholds.items():
        text, n = re.subn(rf"(?m)^( +- name: {route}\n +llm: \w+\n +threshold: )[0-9.]+", rf"\g<1>{value:.2f}", text)
        assert n == 1
    return text


def _ingress_block(text: str) -> dict:
    deployments = yaml.safe_load(text)["applications"][0]["deployments"]
    return next(d["user_config"] for d in deployments if d["name"] == "Ingress")


def test_cli_prints_a_snippet_and_writes_the_config_keeping_comments(
        router_args, encoder, data_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("serve_app.tools.eval.load_encoder", lambda *args, **kwargs: encoder)
    text = SERVE_CONFIG.read_text()
    # Start from routes without thresholds of their own (so --write must add them) and a top_k to change.
    text = re.sub(r"\n +threshold: [0-9.]+[^\n]*\n", "\n", text)
    text = re.sub(r"top_k: \d+", "top_k: 10", text)
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(text)

    assert cal.main(["--data", str(data_file), "--config", str(config_path), "--top-k", "3,5", "--write"]) == 0
    out = capsys.readouterr().out
    snippet = yaml.safe_load(out)
    assert snippet["top_k"] in (3, 5, 10)  # the current value is always tried, and wins ties
    assert [r["name"] for r in snippet["routes"]] == ["code", "math", "general"]

    written = config_path.read_text()
    assert _comments(written) == _comments(text)
    edited = r" +(top_k|threshold|switch_margin): "
    unedited = [line for line in written.splitlines() if not re.match(edited, line)]
    assert unedited == [line for line in text.splitlines() if not re.match(edited, line)]
    routing = load_app_config(config_path).routing
    assert routing.top_k == snippet["top_k"]
    assert routing.thread.switch_margin == snippet["thread"]["switch_margin"]
    assert {r.name: r.threshold for r in routing.routes} == {r["name"]: r["threshold"] for r in snippet["routes"]}
    # Each added threshold sits below its route's llm, as one would write it by hand.
    for r in routing_block(yaml.safe_load(written)["applications"][0])["routes"]:
        assert list(r)[:3] == ["name", "llm", "threshold"]
    # Nothing else changed.
    before = yaml.safe_load(text)
    after = yaml.safe_load(written)
    for r in routing_block(after["applications"][0])["routes"]:
        r.pop("threshold", None)
    routing_block(after["applications"][0])["top_k"] = routing_block(before["applications"][0])["top_k"]
    routing_block(after["applications"][0])["thread"] = routing_block(before["applications"][0])["thread"]
    assert after == before


def test_write_with_the_current_values_keeps_the_file(tmp_path):
    text = SERVE_CONFIG.read_text()
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(text)
    block = _ingress_block(text)
    thresholds = {r["name"]: r["threshold"] for r in block["routes"] if "threshold" in r}
    cal.write_calibration(config_path, cal.Fit(block["top_k"], thresholds, block["thread"]["switch_margin"], 1.0, 1.0))
    assert config_path.read_text() == text


def test_write_sets_existing_values_in_place(tmp_path):
    text = SERVE_CONFIG.read_text()
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(text)
    thresholds = {"code": 0.31, "math": 0.12}
    margin = _ingress_block(text)["thread"]["switch_margin"]
    cal.write_calibration(config_path, cal.Fit(7, thresholds, margin, 1.0, 1.0))
    written = config_path.read_text()
    # Comments, quotes, order and indentation: all as they were, the three values changed on their own lines.
    assert written == _edited_as_text(text, 7, thresholds)
    assert "          top_k: 7                      # score = mean similarity" in written
    routing = load_app_config(config_path).routing
    assert (routing.top_k, routing.route("code").threshold, routing.route("math").threshold) == (7, 0.31, 0.12)


@pytest.mark.parametrize("fit", [cal.Fit(5, {"code": 0.305}, 0.15, 1.0, 1.0),  # not writable as a two-decimal value
                                 cal.Fit(5, {"poetry": 0.3}, 0.15, 1.0, 1.0)])  # no such route
def test_write_refuses_what_it_cannot_set_exactly(fit, tmp_path):
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(SERVE_CONFIG.read_text())
    with pytest.raises(cal.ConfigEditError):
        cal.write_calibration(config_path, fit)
    assert config_path.read_text() == SERVE_CONFIG.read_text()
