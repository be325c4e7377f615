"""Fit the classifier's decision parameters on labelled files: top_k, per-route thresholds, the switch margin.

    python -m serve_app.tools.calibrate --data labelled.jsonl [more.jsonl] [--config serve_config.yaml]
                                        [--part tune] [--write]

Prints a YAML snippet to set in the config, or with ``--write`` sets the values in the file itself
(comments kept). A request whose best route scores below that route's threshold abstains: it goes to the
default route. The default route's own threshold is fitted too: a single request goes there either way, but
in a conversation a turn that is only weakly the default route does not hold the thread against a later
confident turn, and leaves the system prompt to decide.

The search maximises macro-F1: each top_k of a small grid, then per-route thresholds by coordinate
ascent on a 0.01 grid, then the thread's ``switch_margin`` (what a later turn of a conversation needs to
move it, on a 0.05 grid), and the thresholds once more at that margin. Where several values score the
same, the middle of that plateau is kept: it is the choice least tied to the exact items of the files.
Only a conversation's later turns move with the margin, so its plateau is measured on the conversations alone,
and values within 0.015 macro-F1 of the best count as the same: on a hundred conversations that is an item or
two. A file without conversations keeps the margin it has.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.compat import StringIO

from serve_app.api.errors import describe_error
from serve_app.config.file import application_index, user_config
from serve_app.config.graph import INGRESS
from serve_app.config.schema import RoutingConfig
from serve_app.routing.policy import RoutingPolicy, Turn
from serve_app.tools.accuracy import classification_scores
from serve_app.tools.eval import InProcessRouter, add_data_args, load_inputs
from serve_app.tools.labelled import LabelledItem

TOP_KS = (1, 3, 5, 7, 10)
GRID = tuple(round(float(v), 2) for v in np.arange(0.0, 0.96, 0.01))
MARGINS = tuple(round(float(v), 2) for v in np.arange(0.0, 1.01, 0.05))
MARGIN_TOLERANCE = 0.015
_PASSES = 4


@dataclass(frozen=True)
class Fit:
    top_k: int
    thresholds: dict[str, float]  # every route's, the default route's too
    switch_margin: float
    macro_f1: float
    accuracy: float


@dataclass(frozen=True)
class Calibration:
    before: Fit  # the config as it is
    after: Fit
    n: int


def _measure(cands: Sequence[Sequence[Turn]], labels: Sequence[str], thresholds: dict[str, float],
             default_route: str, order: Sequence[str], switch_margin: float = 0.15) -> tuple[float, float]:
    policy = RoutingPolicy(thresholds, default_route, switch_margin)
    predicted = [policy.decide(turns).route for turns in cands]
    s = classification_scores(labels, predicted, order)
    return s.macro_f1, s.accuracy


def fit_thresholds(cands: Sequence[Sequence[Turn]], labels: Sequence[str], start: dict[str, float],
                   default_route: str, grid: Sequence[float] = GRID, switch_margin: float = 0.15) -> dict[str, float]:
    """Coordinate ascent on macro-F1, one route's threshold at a time, from ``start``."""
    order = list(start)
    thresholds = dict(start)
    for _ in range(_PASSES):
        changed = False
        for route in order:
            results = [(_measure(cands, labels, {**thresholds, route: v}, default_route, order, switch_margin), v)
                       for v in grid]
            value = _plateau_middle(results)
            changed |= value != thresholds[route]
            thresholds[route] = value
        if not changed:
            break
    return thresholds


def fit_margin(cands: Sequence[Sequence[Turn]], labels: Sequence[str], thresholds: dict[str, float],
               default_route: str, order: Sequence[str], current: float, margins: Sequence[float] = MARGINS) -> float:
    """The switch margin in the middle of the conversations' plateau; ``current`` if there are no conversations.

    Measured on the conversations alone: among single requests, which the margin never moves, an item would weigh
    a few times less, and the tolerance would span several conversations (on 511 items, seven).
    """
    conversations = [i for i, turns in enumerate(cands) if len(turns) > 1]
    if not conversations:
        return current
    cands, labels = [cands[i] for i in conversations], [labels[i] for i in conversations]
    return _plateau_middle([(_measure(cands, labels, thresholds, default_route, order, m), m) for m in margins],
                           MARGIN_TOLERANCE)


def _plateau_middle(results: Sequence[tuple[tuple[float, float], float]], tolerance: float = 0.0) -> float:
    """The middle of the values whose (macro-F1, accuracy) is the best, or within ``tolerance`` of its macro-F1."""
    best = max(r for r, _ in results)
    plateau = [v for r, v in results if r == best or r[0] >= best[0] - tolerance]
    return plateau[len(plateau) // 2]


def calibrate(classifier: InProcessRouter, routing: RoutingConfig, items: Sequence[LabelledItem],
              top_ks: Sequence[int] = TOP_KS, grid: Sequence[float] = GRID,
              margins: Sequence[float] = MARGINS) -> Calibration:
    routes = [r.name for r in routing.routes]
    labels = [i.label for i in items]
    unknown = sorted(set(labels) - set(routes))
    if unknown:
        raise ValueError(f"labels {unknown} are not routes of the config ({routes})")
    decider, default = classifier.decider, routing.default_route
    threads = [decider.read(i.texts) for i in items]
    embeddings = classifier.embed([t.embedded for t in threads])  # once: only the scoring changes with top_k
    current, margin0 = dict(decider.policy.thresholds), routing.thread.switch_margin
    k0 = routing.top_k

    def candidates(k: int) -> list[list[Turn]]:
        return [decider.turns(thread, e, top_k=k) for thread, e in zip(threads, embeddings)]

    before = Fit(k0, current, margin0, *_measure(candidates(k0), labels, current, default, routes, margin0))
    fits = []
    for k in dict.fromkeys([k0, *top_ks]):  # the current value first: it wins ties
        cands = candidates(k)
        thresholds = fit_thresholds(cands, labels, current, default, grid, margin0)
        margin = fit_margin(cands, labels, thresholds, default, routes, margin0, margins)
        thresholds = fit_thresholds(cands, labels, thresholds, default, grid, margin)
        fits.append(Fit(k, thresholds, margin, *_measure(cands, labels, thresholds, default, routes, margin)))
    after = max(fits, key=lambda f: (f.macro_f1, f.accuracy))  # max keeps the first of equals
    return Calibration(before, after, len(items))


def snippet(cal: Calibration, source: str) -> str:
    b, a = cal.before, cal.after
    lines = [f"# serve_app.tools.calibrate on {source} ({cal.n} items): macro-F1 {b.macro_f1:.3f} -> {a.macro_f1:.3f}, "
             f"accuracy {b.accuracy:.3f} -> {a.accuracy:.3f}",
             f"# Set these keys in the routing block (the user_config of the {INGRESS} deployment) of the Serve "
             "config, or run again with --write:",
             f"top_k: {a.top_k}", "thread:", f"  switch_margin: {a.switch_margin:.2f}", "routes:"]
    for route, value in a.thresholds.items():
        lines += [f"  - name: {route}", f"    threshold: {value:.2f}"]
    return "\n".join(lines)


class ConfigEditError(RuntimeError):
    pass


def write_calibration(path: str | Path, fit: Fit) -> None:
    """Set top_k and the thresholds in the routing block, keeping comments; verified by parsing the file back."""
    text = Path(path).read_text()
    expected = yaml.safe_load(text)
    app = application_index(expected)
    rt = _round_trip()
    doc = rt.load(text)
    block = user_config(doc["applications"][app], INGRESS)
    block["top_k"] = fit.top_k
    block.setdefault("thread", {})["switch_margin"] = rt.load(f"{fit.switch_margin:.2f}")
    entries = {entry["name"]: entry for entry in block["routes"]}
    for route, value in fit.thresholds.items():
        if route not in entries:
            raise ConfigEditError(f"no route {route!r} in the routing block of {path}")
        threshold = rt.load(f"{value:.2f}")  # a float that ruamel writes with two decimals, as the snippet does
        if "threshold" in entries[route]:
            entries[route]["threshold"] = threshold
        else:
            entries[route].insert(list(entries[route]).index("llm") + 1, "threshold", threshold)
    out = StringIO()
    rt.dump(doc, out)
    new = out.getvalue()
    routing = user_config(expected["applications"][app], INGRESS)
    routing["top_k"] = fit.top_k
    routing.setdefault("thread", {})["switch_margin"] = fit.switch_margin
    for r in routing["routes"]:
        if r["name"] in fit.thresholds:
            r["threshold"] = fit.thresholds[r["name"]]
    if yaml.safe_load(new) != expected:
        raise ConfigEditError(f"could not set the values in {path} safely; set them by hand from the snippet")
    Path(path).write_text(new)


def _round_trip() -> YAML:
    """A round-trip YAML in serve_config.yaml's layout, so that the lines not edited come out as they were."""
    rt = YAML()
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.preserve_quotes = True
    rt.width = sys.maxsize  # never fold a long example onto two lines
    return rt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.tools.calibrate", description=__doc__.split("\n")[0])
    add_data_args(parser)
    parser.add_argument("--top-k", default=",".join(map(str, TOP_KS)),
                        help="top_k values to try, besides the config's (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help="set the fitted values in the --config file")
    args = parser.parse_args(argv)
    try:
        config, items = load_inputs(args)
        top_ks = [int(k) for k in args.top_k.split(",")]
        cal = calibrate(InProcessRouter.from_config(config), config.routing, items, top_ks)
        print(snippet(cal, f"{' + '.join(args.data)} (part {args.part})"))
        if args.write:
            write_calibration(args.config, cal.after)
            print(f"# written to {args.config}")
    except (OSError, ValueError, ConfigEditError) as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
