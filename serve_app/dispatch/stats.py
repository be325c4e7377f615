"""Routing statistics: counts per route and decision, errors, and latency percentiles.

Pure bookkeeping. Each ingress replica records its own requests in one ``RoutingStats``, in process;
about once a second it hands a copy to the stats deployment, which merges every replica's for ``/stats``.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.routing.policy import FALLBACK_REASONS

_WINDOW = 2048  # latency samples kept per route: percentiles describe recent traffic


@dataclass(frozen=True)
class RequestRecord:
    route: str | None  # None: rejected before routing (bad request)
    reason: str
    status: int
    latency_ms: float
    classify_ms: float | None = None
    first_token_ms: float | None = None
    stream: bool = False
    # (route, cause) for each route whose model could not answer before ``route``'s did (or before giving up).
    failed: tuple[tuple[str, str], ...] = ()


class RoutingStats:
    def __init__(self) -> None:
        self.started = time.time()
        self.total = 0
        self.routes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.streams = 0
        self.rejected = 0
        self.fallback_causes: Counter[str] = Counter()  # why a route's model could not answer
        self.fallback_paths: Counter[str] = Counter()  # "code->general": answered by a fallback
        self._latency: dict[str, deque[float]] = {}
        self._first_token: dict[str, deque[float]] = {}
        self._classify: deque[float] = deque(maxlen=_WINDOW)
        self.version = 0  # bumped by every record: a replica sends its statistics only when they changed

    def record(self, r: RequestRecord) -> None:
        self.version += 1
        if r.route is None:
            self.rejected += 1
            self.errors[str(r.status)] += 1
            return
        self.total += 1
        self.routes[r.route] += 1
        self.reasons[r.reason] += 1
        self.streams += r.stream
        self.fallback_causes.update(cause for _, cause in r.failed)
        if r.failed and r.status < 400:
            self.fallback_paths[f"{r.failed[0][0]}->{r.route}"] += 1
        if r.status >= 400:
            self.errors[str(r.status)] += 1
        else:
            self._latency.setdefault(r.route, deque(maxlen=_WINDOW)).append(r.latency_ms)
            if r.first_token_ms is not None:
                self._first_token.setdefault(r.route, deque(maxlen=_WINDOW)).append(r.first_token_ms)
        if r.classify_ms is not None:
            self._classify.append(r.classify_ms)

    @classmethod
    def merged(cls, parts: Sequence[RoutingStats]) -> RoutingStats:
        """Every replica's statistics as one: counts add up, latency samples pool."""
        total = cls()
        for p in parts:
            total.started = min(total.started, p.started)
            total.total += p.total
            total.routes.update(p.routes)
            total.reasons.update(p.reasons)
            total.errors.update(p.errors)
            total.streams += p.streams
            total.rejected += p.rejected
            total.fallback_causes.update(p.fallback_causes)
            total.fallback_paths.update(p.fallback_paths)
            for mine, theirs in ((total._latency, p._latency), (total._first_token, p._first_token)):
                for route, samples in theirs.items():
                    mine.setdefault(route, deque()).extend(samples)
            total._classify.extend(p._classify)
        return total

    def snapshot(self, routes: Sequence[str] = ()) -> dict[str, Any]:
        """Totals so far; ``routes`` (those configured now) are listed even before their first request."""
        fallbacks = sum(n for reason, n in self.reasons.items() if reason in FALLBACK_REASONS)
        return {
            "total_requests": self.total,
            "routes": {**{r: 0 for r in routes}, **self.routes},
            "decisions": dict(self.reasons),
            "fallbacks": fallbacks,
            "errors": {"total": sum(self.errors.values()), "by_status": dict(self.errors)},
            "rejected": self.rejected,
            # Requests another model answered because theirs could not (dead, timed out, overloaded, failing).
            "model_fallbacks": {"answered": sum(self.fallback_paths.values()), "by_path": dict(self.fallback_paths),
                                "by_cause": dict(self.fallback_causes)},
            "spillovers": self.fallback_causes["overloaded"],
            "streams": self.streams,
            "latency_ms": {route: _percentiles(v) for route, v in self._latency.items()},
            "first_token_ms": {route: _percentiles(v) for route, v in self._first_token.items()},
            "classifier_ms": _percentiles(self._classify),
            "uptime_s": round(time.time() - self.started, 1),
        }


def _percentiles(samples: deque[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    p50, p95, p99 = np.percentile(np.fromiter(samples, float), [50, 95, 99])
    return {"count": len(samples), "p50": round(p50, 2), "p95": round(p95, 2), "p99": round(p99, 2)}
