"""The real embedding model (all-MiniLM-L6-v2 from its PyPI package, fitted to the routes) and the ingress's
Decider, with the shipped config, in one process: the decision the deployments make, without the hop between them."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from serve_app.api.requests import parse_request
from serve_app.config.schema import AppConfig
from serve_app.routing.encoder import ClassifierLoadError, embed_queries, encode, load_encoder
from serve_app.routing.policy import RoutingDecision
from serve_app.tools.accuracy import classification_scores
from serve_app.tools.eval import InProcessRouter
from serve_app.tools.labelled import load_labelled
from tests.conftest import DEV_SET

# Floors on the held-out halves of the development sets (serve_app.tools.labelled.part_of; the thresholds,
# top_k and switch_margin were fitted on the other halves, the encoder on the routes' examples only).
# Measured (docs/routing.md): single-turn 0.982 macro-F1, lowest class recall 0.969; conversations 0.942
# macro-F1, agent loops 21 of 21 on their task's route; numeric general questions 0.953 accuracy. The floors
# leave room for encoder/library drift (another CPU runs another backend), not for a worse router.
DEV_HOLDOUT_MACRO_F1_FLOOR = 0.97
DEV_HOLDOUT_RECALL_FLOOR = 0.95
CONVERSATIONS_HOLDOUT_MACRO_F1_FLOOR = 0.92  # 0.942 with OpenVINO bf16, 0.927 with ONNX Runtime int8
AGENT_LOOPS_HOLDOUT_FLOOR = 1.0  # share of agent loops routed to their task's route
NUMERIC_GENERAL_HOLDOUT_FLOOR = 0.93
DATA = DEV_SET.parent


@pytest.fixture(scope="module")
def classifier(app_config, encoder) -> InProcessRouter:
    return InProcessRouter.from_config(app_config, encoder)


@pytest.mark.parametrize("text, route", [
    ("Write a Python function to sort a list", "code"),
    ("Solve the integral of x^2 dx", "math"),
    ("What is the capital of France?", "general"),
])
def test_seed_examples(classifier, text, route):
    decision = classifier.classify((text,))
    assert decision.route == route and decision.reason == "classified"
    thread = classifier.decider.read((text,))
    [turn] = classifier.decider.turns(thread, classifier.embed([thread.embedded])[0])
    assert decision.score == max(turn.scores.values()) == turn.scores[route]


def test_capital_is_not_code(classifier):
    # The kvcached example's substring rule sends this to code ("capital" contains "api").
    assert classifier.classify(("What is the capital of Australia?",)).route == "general"


def test_follow_up_stays_with_the_conversation(classifier):
    parsed = parse_request("chat", {"messages": [
        {"role": "user", "content": "Write a Python function that reverses a linked list"},
        {"role": "assistant", "content": "def reverse(head): ..."},
        {"role": "user", "content": "and now in Rust?"},
    ]})
    decision = classifier.classify(parsed.turns)
    assert decision.route == "code"


def test_a_request_a_keyword_decides_is_not_embedded_and_routes_as_if_it_were(classifier):
    # The shortcut (Decider.forced) must decide what the whole decision, scores and all, decides: checked on every
    # item of the development sets whose last turn a keyword decides (fenced code, LaTeX).
    decider, checked = classifier.decider, 0
    for path in (DEV_SET, DATA / "conversations.jsonl", DATA / "numeric_general.jsonl"):
        for item in load_labelled(path, decider.config.context_turns):
            thread = decider.read(item.texts, item.system)
            if thread.texts and (forced := decider.forced(thread)) is not None:
                full = decider.decide(thread, classifier.embed([thread.embedded])[0])
                assert (full.route, full.reason) == (forced.route, forced.reason), item.key
                checked += 1
    assert checked >= 20
    fenced = "Why does this fail?\n```python\nprint(1/0)\n```"
    embedded: list[Any] = []
    counting = InProcessRouter(_Counting(classifier.encoder, embedded), decider)
    assert counting.classify(("Solve x^2 = 4", fenced)) == RoutingDecision("code", "keyword")
    assert embedded == []
    reading = decider.start(("Solve x^2 = 4", fenced))  # what the Ingress reads: no classifier call, no time
    assert (reading.next_texts(), reading.embedded, reading.decision.reason) == (None, 0, "keyword")
    counting.classify(("Why does this fail?",))
    assert embedded  # the same router embeds a request no keyword decides


def test_one_encoder_call_for_many_queries_matches_one_call_each(encoder):
    # What the Classifier deployment's @serve.batch method does with a batch (tests/test_serving.py sends
    # concurrent requests through the deployment itself).
    queries = [("Write a SQL join",), ("and now in Rust?", "Write a Python sort\nand now in Rust?"), (),
               ("Tell me about Rome",)]
    batched = embed_queries(encoder, queries)
    assert [len(b) for b in batched] == [1, 2, 0, 1]
    for query, vectors in zip(queries, batched):
        if query:
            # The same vectors up to the backend's rounding (bf16 backends pad texts run together).
            assert (vectors * encode(encoder, query)).sum(axis=1).min() > 0.9999
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_missing_model_is_a_clear_startup_error(tmp_path):
    with pytest.raises(ClassifierLoadError, match="from local files"):
        load_encoder(str(tmp_path / "no-such-model"))


def test_development_set_holdout_floor(classifier):
    items = load_labelled(DEV_SET, part="holdout")
    predicted = [classifier.classify(i.texts).route for i in items]
    scores = classification_scores([i.label for i in items], predicted, ["code", "math", "general"])
    recalls = {label: round(c.recall, 3) for label, c in scores.per_class.items()}
    assert scores.macro_f1 >= DEV_HOLDOUT_MACRO_F1_FLOOR, f"macro-F1 {scores.macro_f1:.3f} on {len(items)} items"
    assert min(recalls.values()) >= DEV_HOLDOUT_RECALL_FLOOR, f"recall per class {recalls}"


def test_conversations_holdout_floor(classifier):
    items = load_labelled(DATA / "conversations.jsonl", part="holdout")
    kinds = {json.loads(line)["id"]: json.loads(line)["kind"]
             for line in (DATA / "conversations.jsonl").read_text().splitlines()}
    decisions = [classifier.classify(i.texts, i.system) for i in items]
    scores = classification_scores([i.label for i in items], [d.route for d in decisions], ["code", "math", "general"])
    assert scores.macro_f1 >= CONVERSATIONS_HOLDOUT_MACRO_F1_FLOOR, f"macro-F1 {scores.macro_f1:.3f}"
    loops = [d.route == i.label for i, d in zip(items, decisions) if kinds[i.key] == "agent_loop"]
    assert sum(loops) / len(loops) >= AGENT_LOOPS_HOLDOUT_FLOOR, f"{sum(loops)} of {len(loops)} agent loops"
    # The thread decides often, and says so: x-router-reason is "context" then.
    assert sum(d.reason == "context" for d in decisions) >= len(items) // 4


def test_numeric_general_holdout_floor(classifier):
    items = load_labelled(DATA / "numeric_general.jsonl", part="holdout")
    right = sum(classifier.classify(i.texts).route == i.label for i in items)
    assert right / len(items) >= NUMERIC_GENERAL_HOLDOUT_FLOOR, f"{right} of {len(items)}"


def test_an_agent_loop_stays_on_its_tasks_route_whatever_the_framework_adds(classifier):
    task = "Fix the failing test in tests/test_parser.py; the tokenizer drops the last token"
    loop = [task, "<system-reminder>Keep answers short. The todo list is empty.</system-reminder>", "continue",
            "[Tool output truncated]\nPlease continue from where you left off.", "try again"]
    routes = {classifier.classify(tuple(loop[:n])).route for n in range(1, len(loop) + 1)}
    assert routes == {"code"}
    assert classifier.classify(("<system-reminder>Be brief.</system-reminder>",)).reason == "no_text"


def test_an_agents_system_prompt_decides_only_what_its_user_turns_leave_undecided(classifier):
    coding_agent = "You are a coding agent working in the user's repository. Use the tools to run commands and tests."
    vague = ("please pick up the ticket I assigned you", "continue")
    assert classifier.classify(vague).reason == "below_threshold"  # the user's words alone: no route is confident
    decision = classifier.classify(vague, coding_agent)
    assert (decision.route, decision.reason) == ("code", "system")
    # Never over a user's turn that decides, and a generic prompt leaves the default route answering.
    assert classifier.classify(("What is the capital of Australia?",), coding_agent).reason == "classified"
    assert classifier.classify(vague, "You are a helpful assistant.").route == "general"


def test_a_reformatting_turn_is_read_with_the_turn_before_it(classifier):
    rivers = ("What are the five longest rivers in the world?", "sort them ascending by length")
    thread = classifier.decider.read(rivers)
    assert thread.embedded == (*rivers, "sort them ascending by length\nWhat are the five longest rivers in the world?")
    assert classifier.classify(rivers).route == "general"


def test_a_request_embeds_a_turns_pair_only_where_the_decision_needs_it(classifier):
    # The serving path (Decider.start) embeds the turns, then only the pairs the policy asks for; the offline
    # tools embed every pair at once. Same decisions either way.
    decider = classifier.decider

    def asked(turns: tuple[str, ...]) -> tuple[list[str], Any]:
        thread = decider.read(turns)
        reading, asks = decider.start(turns), []
        while (texts := reading.next_texts()) is not None:
            asks.append(texts)
            reading.add(classifier.embed([texts])[0])
        eager = decider.decide(thread, classifier.embed([thread.embedded])[0])
        assert (reading.decision.route, reading.decision.reason) == (eager.route, eager.reason)
        assert reading.decision.score == pytest.approx(eager.score, abs=1e-3)
        assert asks[0] == thread.texts and all(len(texts) == 1 for texts in asks[1:])  # the turns, then one by one
        assert reading.embedded == sum(map(len, asks))
        return [text for texts in asks[1:] for text in texts], reading.decision

    rivers = ("What are the five longest rivers in the world?", "sort them ascending by length")
    texts, decision = asked(rivers)
    assert texts == [f"{rivers[1]}\n{rivers[0]}"] and decision.route == "general"
    texts, decision = asked(("Write a Python function that reverses a string", "now make it handle unicode too",
                             "add type hints"))
    assert texts == [] and decision.route == "code"


def test_a_change_of_subject_leaves_the_conversation(classifier):
    maths = ("Solve 3x + 7 = 22 for x", "thanks! unrelated: what's the capital of Peru?")
    decision = classifier.classify(maths)
    assert (decision.route, decision.reason) == ("general", "classified")
    assert classifier.decider.read(maths).switched == (False, True)
    assert classifier.decider.read(maths).texts[1] == "what's the capital of Peru?"


def test_a_new_category_needs_only_config(router_args, routing_args, encoder):
    # A creative-writing route: its examples, and general's poems and stories moved over to it.
    routes = []
    for route in routing_args["routes"]:
        if route["name"] == "general":
            route = {**route, "examples": [e for e in route["examples"] if not re.search("poem|haiku|short story", e)]}
        routes.append(route)
    moved = [e for e in routing_args["routes"][2]["examples"] if re.search("poem|haiku|short story", e)]
    creative = {"name": "creative", "llm": "general", "examples": [
        *moved, "Write a sonnet about the sea", "Invent a bedtime story about a dragon who is afraid of the dark",
        "Write song lyrics about leaving home", "Compose a limerick about a forgetful wizard",
        "Write a short scene where two old friends meet at a train station",
        "Create a fairy tale set in a city under the ocean", "Write a free-verse poem about city lights at night",
        "Describe an alien planet for the opening chapter of a science fiction novel"]}
    config = AppConfig.model_validate({"router": router_args,
                                       "routing": {**routing_args, "routes": [*routes, creative]}})
    classifier = InProcessRouter.from_config(config, encoder)
    routed = [classifier.classify((q,)) for q in (
        "Compose song lyrics about a rainy afternoon in London", "Write a poem about the moon",
        "Write a story for children about a brave little tugboat", "Write a Python function that reverses a string",
        "What is 12% of 250?", "Write a polite email asking for a refund")]
    assert [d.route for d in routed] == ["creative"] * 3 + ["code", "math", "general"]
    assert all(d.reason == "classified" for d in routed)
    assert classifier.decider.routes == ["code", "math", "general", "creative"]


class _Counting:
    """The real encoder, remembering what it was asked to embed."""

    def __init__(self, encoder: Any, seen: list[Any]) -> None:
        self._encoder, self._seen = encoder, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode(self, texts: Any) -> Any:
        self._seen.append(tuple(texts))
        return self._encoder.encode(texts)
