"""Classification metrics for the router: accuracy, macro-F1, per-class scores, confusion matrix, and the
interval a macro-F1 measured on a few hundred items carries.

Plain Python, so the offline tools need no scikit-learn (the intervals are scipy's bootstrap); macro-F1
averages over every label that occurs in the truth or the predictions (scikit-learn's default), and a class
never predicted has precision 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Scores:
    labels: list[str]
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: dict[str, dict[str, int]]  # confusion[true][predicted]

    def as_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "per_class": {k: vars(v) for k, v in self.per_class.items()}, "confusion": self.confusion}


def classification_scores(truth: Sequence[str], predicted: Sequence[str], order: Sequence[str] = ()) -> Scores:
    """Scores of ``predicted`` against ``truth``; labels listed in ``order`` first, the rest sorted."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError("truth and predicted must be non-empty and of the same length")
    present = set(truth) | set(predicted)
    labels = [lab for lab in order if lab in present] + sorted(present - set(order))
    pairs = Counter(zip(truth, predicted))
    confusion = {t: {p: pairs[t, p] for p in labels} for t in labels}
    per_class = {}
    for label in labels:
        hit = pairs[label, label]
        n_pred = sum(confusion[t][label] for t in labels)
        n_true = sum(confusion[label].values())
        precision = hit / n_pred if n_pred else 0.0
        recall = hit / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassScores(precision, recall, f1, n_true)
    accuracy = sum(pairs[lab, lab] for lab in labels) / len(truth)
    macro_f1 = sum(c.f1 for c in per_class.values()) / len(labels)
    return Scores(labels, accuracy, macro_f1, per_class, confusion)


def macro_f1_interval(truth: Sequence[str], predicted: Sequence[str], order: Sequence[str] = (),
                      confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The range of macro-F1 that sets of this size, drawn like this one, would show: a percentile bootstrap
    over the items (scipy's), seeded so a report reads the same each time. Two configurations whose scores
    differ by less than its width may differ by an item or two, not by a better router: compare them on the
    same items with ``macro_f1_difference_interval``."""
    truth_a, predicted_a = np.asarray(truth), np.asarray(predicted)
    return _bootstrap(len(truth_a), lambda rows: _macro_f1(truth_a, predicted_a, rows, order),
                      confidence, resamples, seed, (0.0, 1.0))


def macro_f1_difference_interval(truth: Sequence[str], baseline: Sequence[str], candidate: Sequence[str],
                                 order: Sequence[str] = (), confidence: float = 0.95, resamples: int = 2000,
                                 seed: int = 0) -> tuple[float, float]:
    """The candidate's macro-F1 minus the baseline's, resampled item by item for both at once (a paired
    bootstrap): an interval that excludes 0 is a difference these items show, not the luck of the draw."""
    truth_a, baseline_a, candidate_a = np.asarray(truth), np.asarray(baseline), np.asarray(candidate)
    return _bootstrap(len(truth_a), lambda rows: _macro_f1(truth_a, candidate_a, rows, order)
                      - _macro_f1(truth_a, baseline_a, rows, order), confidence, resamples, seed, (-1.0, 1.0))


def _macro_f1(truth: np.ndarray, predicted: np.ndarray, rows: np.ndarray, order: Sequence[str]) -> float:
    return classification_scores(truth[rows].tolist(), predicted[rows].tolist(), order).macro_f1


def _bootstrap(n: int, statistic: Callable[[np.ndarray], float], confidence: float, resamples: int,
               seed: int, unknown: tuple[float, float]) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if n < 2:  # one item cannot be resampled: it says nothing about the range
        return unknown
    found = bootstrap((np.arange(n),), statistic, vectorized=False, n_resamples=resamples,
                      confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(found.confidence_interval.low), float(found.confidence_interval.high)
