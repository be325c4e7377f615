"""The evaluation CLI, its metrics and the labelled-file reader."""

from __future__ import annotations

import copy
import json
import random

import pytest
import yaml

from serve_app.config.file import routing_block
from serve_app.tools import eval as eval_cli
from serve_app.tools.accuracy import classification_scores, macro_f1_interval
from serve_app.tools.eval import InProcessRouter
from serve_app.tools.labelled import LabelledDataError, load_labelled, part_of
from tests.conftest import DEV_SET, SERVE_CONFIG

ITEMS = [
    {"text": "Write a Python function that merges two dictionaries", "label": "code"},
    {"text": "What is the integral of 2x from 0 to 3?", "label": "math"},
    {"text": "Recommend a good book about the history of Japan", "label": "general"},
    {"id": "follow-up", "label": "code", "messages": [
        {"role": "user", "content": "Write a Python function that reverses a linked list"},
        {"role": "assistant", "content": "def reverse(head): ..."},
        {"role": "user", "content": "and now in Rust?"},
    ]},
    {"label": "math", "messages": [
        {"role": "system", "content": "You are a friendly assistant for a travel agency."},
        {"role": "user", "content": "How many ways can the letters of the word LEVEL be arranged?"},
    ]},
    # Deliberately labelled general: the numbers must not all be 1.0.
    {"text": "Solve 2x + 3 = 11 for x", "label": "general"},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in ITEMS) + "\n")
    return path


@pytest.fixture
def shared_encoder(monkeypatch, encoder):
    monkeypatch.setattr("serve_app.tools.eval.load_encoder", lambda *args, **kwargs: encoder)
    return encoder


def test_eval_json_on_text_and_messages(data_file, shared_encoder, app_config, capsys):
    assert eval_cli.main(["--data", str(data_file), "--config", str(SERVE_CONFIG), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert {"accuracy", "macro_f1", "per_class", "confusion", "latency_ms"} <= result.keys()
    assert result["n"] == len(ITEMS)

    # The same classifier over the same reading of the file gives the same numbers.
    items = load_labelled(data_file, app_config.routing.context_turns)
    classifier = InProcessRouter.from_config(app_config, shared_encoder)
    predicted = [classifier.classify(i.texts).route for i in items]
    truth = [i["label"] for i in ITEMS]
    assert predicted[3] == "code"  # the follow-up is read with its conversation
    assert predicted[5] == "math"  # the mislabelled one
    expected = classification_scores(truth, predicted, ["code", "math", "general"])
    assert result["accuracy"] == pytest.approx(expected.accuracy) == pytest.approx(5 / 6)
    assert result["macro_f1"] == pytest.approx(expected.macro_f1)
    assert result["confusion"]["general"]["math"] == 1
    assert sum(sum(row.values()) for row in result["confusion"].values()) == len(ITEMS)
    assert {k: v["support"] for k, v in result["per_class"].items()} == {"code": 2, "math": 2, "general": 2}
    assert result["per_class"]["general"]["recall"] == pytest.approx(0.5)
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["macro_f1_interval"] == pytest.approx(list(macro_f1_interval(truth, predicted, ["code", "math",
                                                                                                  "general"])))
    assert any(line.startswith("accuracy 0.833") for line in out)  # the readable report comes first


def test_eval_errors_list_each_misrouted_item_with_what_decided_it(data_file, shared_encoder, capsys):
    assert eval_cli.main(["--data", str(data_file), "--config", str(SERVE_CONFIG), "--errors"]) == 0
    out = capsys.readouterr().out
    listed = out[out.index("misrouted: "):].strip().splitlines()
    assert listed[0] == f"misrouted: 1 of {len(ITEMS)}"
    [line] = listed[1:]
    assert line.startswith("general -> math (classified 0.") and line.endswith(": Solve 2x + 3 = 11 for x")


def test_eval_against_a_baseline_config(data_file, shared_encoder, serve_config, tmp_path, capsys):
    # The baseline sends nothing to math (a threshold no text reaches): the two maths items go to general,
    # and so does the one labelled general that the shipped config sends to math.
    config = copy.deepcopy(serve_config)
    next(r for r in routing_block(config["applications"][0])["routes"] if r["name"] == "math")["threshold"] = 1.0
    baseline = tmp_path / "no_math.yaml"
    baseline.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = ["--data", str(data_file), "--config", str(SERVE_CONFIG), "--json"]
    assert eval_cli.main([*argv, "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    found = json.loads(out[-1])["baseline"]
    assert (found["right_only_here"], found["right_only_baseline"]) == (2, 1)
    assert found["difference"] == pytest.approx(json.loads(out[-1])["macro_f1"] - found["macro_f1"])
    low, high = found["difference_interval"]
    assert low <= found["difference"] <= high
    assert any(line.startswith(f"against {baseline}: macro-F1") for line in out)

    assert eval_cli.main([*argv, "--baseline", str(SERVE_CONFIG)]) == 0  # itself: no difference at all
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["baseline"]
    assert (same["difference"], same["difference_interval"], same["right_only_here"]) == (0, [0, 0], 0)


def test_eval_plot(data_file, shared_encoder, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plots" / "confusion.png"
    eval_cli.main(["--data", str(data_file), "--config", str(SERVE_CONFIG), "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    truth = [rng.choice(["code", "math", "general"]) for _ in range(200)]
    predicted = [t if rng.random() < 0.7 else rng.choice(["code", "math", "other"]) for t in truth]
    s = classification_scores(truth, predicted, ["code", "math", "general"])
    assert s.labels == ["code", "math", "general", "other"]
    assert s.accuracy == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert s.macro_f1 == pytest.approx(metrics.f1_score(truth, predicted, average="macro", zero_division=0))
    p, r, f, n = metrics.precision_recall_fscore_support(truth, predicted, labels=s.labels, zero_division=0)
    for i, label in enumerate(s.labels):
        c = s.per_class[label]
        assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((p[i], r[i], f[i], n[i]))


def test_macro_f1_interval_says_how_far_a_set_of_this_size_can_move():
    rng = random.Random(3)
    truth = [rng.choice(["code", "math", "general"]) for _ in range(400)]
    predicted = [t if rng.random() < 0.94 else "general" for t in truth]
    point = classification_scores(truth, predicted).macro_f1
    low, high = macro_f1_interval(truth, predicted)
    assert low < point < high and (low, high) == macro_f1_interval(truth, predicted)  # seeded: same report twice
    few_low, few_high = macro_f1_interval(truth[:100], predicted[:100])
    assert few_high - few_low > high - low  # a quarter of the items: a wider range
    assert macro_f1_interval(truth, truth) == (1.0, 1.0)  # nothing wrong in any resample
    assert macro_f1_interval(["code"], ["code"]) == (0.0, 1.0)  # one item says nothing about the range


def test_split_is_deterministic_disjoint_and_about_half():
    ids = [json.loads(line)["id"] for line in DEV_SET.read_text().splitlines()]
    tune = load_labelled(DEV_SET, part="tune")
    holdout = load_labelled(DEV_SET, part="holdout")
    assert {i.key for i in tune}.isdisjoint(i.key for i in holdout)
    assert len(tune) + len(holdout) == len(ids)
    assert 0.4 < len(holdout) / len(ids) < 0.6
    assert [part_of(k) for k in ("mbpp/312", "mbpp/312")] == [part_of("mbpp/312")] * 2


@pytest.mark.parametrize("line, message", [
    ('{"text": "hi"}', "'label'"),
    ('{"label": "code"}', "'text'"),
    ('{"label": "code", "messages": []}', "messages: List should have at least 1 item"),
    ("not json", "not JSON"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": "general"}\n' + line + "\n")
    with pytest.raises(LabelledDataError, match=message) as info:
        load_labelled(path)
    assert f"{path}:2" in str(info.value)
