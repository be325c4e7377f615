"""Classification metrics for the router: accuracy, macro-F1, per-class scores, confusion matrix.

Plain Python, so the offline tools need no scikit-learn; macro-F1 averages over every label that
occurs in the truth or the predictions (scikit-learn's default), and a class never predicted has
precision 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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

