"""Each route's example queries as unit vectors; a request scores against them in one matrix product."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ExampleIndex:
    """A route scores the mean cosine similarity of its ``top_k`` nearest examples.

    Measured on the dev set against the nearest example alone (k=1), the centroid of each route and a
    logistic-regression head over the examples, the mean of the k nearest was best (docs/routing.md).
    Routes are padded to the same number of examples, so scoring every route is one matrix product and
    one partition, however many routes there are.
    """

    def __init__(self, route_names: Sequence[str], examples: Sequence[np.ndarray], top_k: int) -> None:
        self.route_names = list(route_names)
        self.top_k = top_k
        self._counts = np.array([len(e) for e in examples])
        self._width = int(self._counts.max())
        dim = examples[0].shape[1]
        self._matrix = np.zeros((len(examples) * self._width, dim), dtype=np.float32)
        for r, e in enumerate(examples):
            self._matrix[r * self._width:r * self._width + len(e)] = e
        self._padding = np.arange(self._width)[None, :] >= self._counts[:, None]  # (routes, width)

    def score_matrix(self, queries: np.ndarray, top_k: int | None = None) -> np.ndarray:
        """(queries, routes) scores for unit-norm query embeddings."""
        if not len(queries):
            return np.zeros((0, len(self.route_names)), dtype=np.float32)
        k = min(top_k or self.top_k, self._width)
        sims = (queries.astype(np.float32, copy=False) @ self._matrix.T).reshape(len(queries), -1, self._width)
        sims[:, self._padding] = -np.inf
        nearest = -np.partition(-sims, k - 1, axis=2)[:, :, :k]  # the k largest, unordered
        nearest[np.isinf(nearest)] = 0  # a route with fewer than k examples averages the ones it has
        return nearest.sum(axis=2) / np.minimum(k, self._counts)

    def scores(self, queries: np.ndarray, top_k: int | None = None) -> list[dict[str, float]]:
        return [dict(zip(self.route_names, map(float, row))) for row in self.score_matrix(queries, top_k)]
