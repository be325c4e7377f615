"""Evaluate the deployment's classifier on a labelled JSONL file.

    python -m serve_app.tools.eval --data FILE.jsonl [--config serve_config.yaml] [--part holdout] [--json]
                                   [--plot FILE.png] [--errors] [--model FOLDER]
                                   [--backend torch|onnx|openvino|auto] [--max-seq-length N]
                                   [--baseline CONFIG]

Builds the same encoder and ``Decider`` from the same config as the classifier and ingress deployments,
and reads each item the way the ingress reads a request (serve_app/tools/labelled.py), one query at a time,
so the latency is what one request costs (without the hop between deployments). ``--model``, ``--backend``
and ``--max-seq-length`` replace the config's ``classifier`` keys, to compare encoders and their backends.
``--errors`` lists each misrouted item with what decided it: where to look when adding examples.
``--baseline`` evaluates another config file on the same items and says whether the difference is one these
items show or the luck of a few of them (a paired bootstrap of macro-F1, and the items each gets right alone).
With ``--json`` the last line of stdout is one JSON object: accuracy, macro_f1, macro_f1_interval, per_class,
confusion, latency_ms ({p50, p99}), n, decisions and encoder (and ``baseline`` with ``--baseline``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from serve_app.api.errors import describe_error
from serve_app.config.file import load_app_config
from serve_app.config.schema import AppConfig, ClassifierConfig
from serve_app.routing.decider import Decider, examples_of
from serve_app.routing.encoder import BACKENDS, embed_queries, encode, load_encoder
from serve_app.routing.policy import RoutingDecision
from serve_app.tools.accuracy import Scores, classification_scores, macro_f1_difference_interval, macro_f1_interval
from serve_app.tools.labelled import PARTS, LabelledItem, load_labelled


@dataclass(frozen=True)
class InProcessRouter:
    """The serving decision in one process: the classifier deployment's encoder and the ingress's Decider."""

    encoder: Any
    decider: Decider

    @classmethod
    def from_config(cls, config: AppConfig, encoder: Any | None = None) -> InProcessRouter:
        c = config.router.classifier
        if encoder is None:
            encoder = load_encoder(c.model, c.backend, c.max_seq_length, threads=c.threads)
        examples = encode(encoder, examples_of(config.routing))
        return cls(encoder, Decider(config.routing, examples))

    def embed(self, queries: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return embed_queries(self.encoder, queries)

    def classify(self, turns: Sequence[str], system: str = "") -> RoutingDecision:
        """A request's user turns (oldest first) and system prompt as the ingress decides them (the same
        ``Decider.start`` sequence), the embedding in-process."""
        reading = self.decider.start(turns, system)
        while (texts := reading.next_texts()) is not None:
            reading.add(self.embed([texts])[0])
        return reading.decision


@dataclass(frozen=True)
class Evaluation:
    scores: Scores
    latency_ms: dict[str, float]
    decisions: dict[str, int]  # by RoutingDecision.reason
    routed: tuple[RoutingDecision, ...]  # each item's decision, in the items' order
    encoder: str  # which backend embedded, e.g. "onnx-int8"
    macro_f1_interval: tuple[float, float]  # 95 %, the items resampled (accuracy.macro_f1_interval)

    def as_json(self) -> dict[str, Any]:
        return {**self.scores.as_json(), "macro_f1_interval": list(self.macro_f1_interval),
                "latency_ms": self.latency_ms, "n": len(self.routed), "decisions": self.decisions,
                "encoder": self.encoder}


def evaluate(classifier: InProcessRouter, items: Sequence[LabelledItem], order: Sequence[str],
             progress: bool = True) -> Evaluation:
    classifier.classify(items[0].texts, items[0].system)  # warm-up: the first call pays for lazy initialisation
    routed, latencies = [], []
    for item in tqdm(items, desc="classifying", unit="query", file=sys.stderr, disable=not progress):
        started = time.perf_counter()
        routed.append(classifier.classify(item.texts, item.system))
        latencies.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(latencies, [50, 99])
    truth, predicted = [i.label for i in items], [d.route for d in routed]
    return Evaluation(classification_scores(truth, predicted, order),
                      {"p50": round(float(p50), 2), "p99": round(float(p99), 2)},
                      dict(Counter(d.reason for d in routed)), tuple(routed), classifier.encoder.name,
                      macro_f1_interval(truth, predicted, order))


def format_errors(items: Sequence[LabelledItem], ev: Evaluation, width: int = 80) -> str:
    """Each misrouted item: its id, its label -> the route (what decided, with its score), its last two turns
    (and the system prompt, where it decided)."""
    lines = []
    for item, d in zip(items, ev.routed):
        if d.route != item.label:
            name = "" if item.key in item.texts else f"{item.key}  "
            score = "" if d.score is None else f" {d.score:.2f}"
            turns = " || ".join(_shortened(t, width) for t in item.texts[-2:])
            if d.reason == "system":
                turns += f" || system: {_shortened(item.system, width)}"
            lines.append(f"{name}{item.label} -> {d.route} ({d.reason}{score}): {turns}")
    return "\n".join([f"misrouted: {len(lines)} of {len(items)}", *lines])


def compare(items: Sequence[LabelledItem], baseline: Evaluation, ev: Evaluation, order: Sequence[str]
            ) -> dict[str, Any]:
    """``ev`` against ``baseline`` on the same items: the macro-F1 difference with its paired interval, and
    how many items each routes right that the other does not."""
    truth = [i.label for i in items]
    mine, theirs = [d.route for d in ev.routed], [d.route for d in baseline.routed]
    low, high = macro_f1_difference_interval(truth, theirs, mine, order)
    return {"macro_f1": baseline.scores.macro_f1, "difference": ev.scores.macro_f1 - baseline.scores.macro_f1,
            "difference_interval": [low, high],
            "right_only_here": sum(m == t != o for t, m, o in zip(truth, mine, theirs)),
            "right_only_baseline": sum(o == t != m for t, m, o in zip(truth, mine, theirs))}


def format_comparison(name: str, found: dict[str, Any]) -> str:
    low, high = found["difference_interval"]
    macro_f1 = found["macro_f1"] + found["difference"]
    verdict = ("better on these items" if low > 0 else "worse on these items" if high < 0
               else "not told apart by these items")
    return (f"against {name}: macro-F1 {found['macro_f1']:.3f} -> {macro_f1:.3f}, {found['difference']:+.3f} "
            f"(95 % interval {low:+.3f} to {high:+.3f}, paired bootstrap): {verdict}\n"
            f"items right here only: {found['right_only_here']}, right with {name} only: "
            f"{found['right_only_baseline']}")


def _shortened(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_report(ev: Evaluation) -> str:
    s = ev.scores
    width = max(8, *(len(lab) for lab in s.labels))
    low, high = ev.macro_f1_interval
    lines = [f"accuracy {s.accuracy:.3f}   macro-F1 {s.macro_f1:.3f}   ({len(ev.routed)} items)",
             f"macro-F1 95 % interval {low:.3f}-{high:.3f} (bootstrap: these items resampled)", "",
             f"{'class':<{width}}  precision  recall     f1  support"]
    for lab, c in s.per_class.items():
        lines.append(f"{lab:<{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:5.3f}  {c.support:7d}")
    lines += ["", "confusion (rows: true label, columns: predicted route)",
              " " * width + "".join(f"  {lab:>{width}}" for lab in s.labels)]
    for t in s.labels:
        lines.append(f"{t:<{width}}" + "".join(f"  {s.confusion[t][p]:>{width}d}" for p in s.labels))
    lines += ["", f"latency per query: p50 {ev.latency_ms['p50']:.1f} ms, p99 {ev.latency_ms['p99']:.1f} ms",
              "decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(ev.decisions.items()))]
    return "\n".join(lines)


def plot_confusion(scores: Scores, path: str | Path, title: str = "") -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = scores.labels
    counts = np.array([[scores.confusion[t][p] for p in labels] for t in labels])
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # colour by recall, so classes compare
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 2.2, 1.2 * len(labels) + 1.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted route")
    ax.set_ylabel("true label")
    ax.set_title(title or f"accuracy {scores.accuracy:.3f}, macro-F1 {scores.macro_f1:.3f}", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, nargs="+",
                        help="JSONL: {'text' or 'messages', 'label'[, 'id']} per line; several files are read as one")
    parser.add_argument("--config", default="serve_config.yaml", help="Serve config file (default: %(default)s)")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="half of the file, split by a hash of each id: tune on one, report on the other")


def load_inputs(args: argparse.Namespace) -> tuple[AppConfig, list[LabelledItem]]:
    config = load_app_config(args.config)
    return config, [item for path in args.data for item in load_labelled(path, config.routing.context_turns, args.part)]


def with_classifier(config: AppConfig, **keys: Any) -> AppConfig:
    """``config`` with these ``classifier`` keys replaced (None keeps the config's), validated again."""
    keys = {k: v for k, v in keys.items() if v is not None}
    if not keys:
        return config
    classifier = ClassifierConfig.model_validate({**config.router.classifier.model_dump(), **keys})
    return config.model_copy(update={"router": config.router.model_copy(update={"classifier": classifier})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.tools.eval", description=__doc__.split("\n")[0])
    add_data_args(parser)
    parser.add_argument("--json", action="store_true", help="end stdout with one line of JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the confusion matrix to a PNG")
    parser.add_argument("--errors", action="store_true", help="list the misrouted items and what decided each")
    parser.add_argument("--model", help="classifier.model to use instead of the config's (a fitted one, say)")
    parser.add_argument("--backend", choices=BACKENDS, help="classifier.backend to use instead of the config's")
    parser.add_argument("--max-seq-length", type=int, help="classifier.max_seq_length to use instead of the config's")
    parser.add_argument("--baseline", metavar="CONFIG",
                        help="another config file, as it stands, on the same items: is the difference real?")
    args = parser.parse_args(argv)
    try:
        config, items = load_inputs(args)
        config = with_classifier(config, model=args.model, backend=args.backend, max_seq_length=args.max_seq_length)
        baseline = load_app_config(args.baseline) if args.baseline else None
    except (OSError, ValueError) as exc:  # a missing file, a bad line or config: one readable line
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    classifier = InProcessRouter.from_config(config)
    order = [r.name for r in config.routing.routes]
    ev = evaluate(classifier, items, order)
    data = " + ".join(args.data)
    print(f"{data} (part {args.part}) with {args.config}, encoder {classifier.encoder.describe()}")
    print(format_report(ev))
    compared: dict[str, Any] = {}
    if baseline is not None:
        # The same items read as that config reads them (its context_turns), in the same order.
        theirs = [i for path in args.data for i in load_labelled(path, baseline.routing.context_turns, args.part)]
        baseline_ev = evaluate(InProcessRouter.from_config(baseline), theirs, order)
        compared = {"config": args.baseline} | compare(items, baseline_ev, ev, order)
        print("\n" + format_comparison(args.baseline, compared))
    if args.errors:
        print("\n" + format_errors(items, ev))
    if args.plot:
        plot_confusion(ev.scores, args.plot, f"{' + '.join(Path(d).name for d in args.data)} ({args.part}): accuracy "
                       f"{ev.scores.accuracy:.3f}, macro-F1 {ev.scores.macro_f1:.3f}")
        print(f"confusion matrix: {args.plot}")
    if args.json:
        print(json.dumps(ev.as_json() | ({"baseline": compared} if compared else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
