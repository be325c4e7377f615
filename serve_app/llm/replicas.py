"""Which deployments have a replica taking requests, from Serve's view of them (``serve.status()``).

The dispatch routes around an LLM deployment that lost every replica (a crash, its node gone) instead of
queueing behind its restart. A deployment that has not yet served since the view began (the graph is still
starting) is waited for, as Serve's handle would: only a lost deployment is empty.
"""

from __future__ import annotations

from collections.abc import Mapping

# Replica states that take requests: an UPDATING replica is being reconfigured in place and keeps serving.
SERVING_STATES = ("RUNNING", "UPDATING", "PENDING_MIGRATION")


class ReplicaView:
    def __init__(self) -> None:
        self.serving: dict[str, int] = {}  # by deployment, from the last update; empty when unknown
        self._served: set[str] = set()  # deployments seen with a serving replica

    def update(self, replica_states: Mapping[str, Mapping[str, int]]) -> None:
        """Each deployment's replica counts by state, as ``serve.status()`` gives them."""
        self.serving = {name: sum(states.get(s, 0) for s in SERVING_STATES) for name, states in replica_states.items()}
        self._served |= {name for name, n in self.serving.items() if n > 0}

    def forget(self) -> None:
        """Serve's status could not be read: every deployment counts as serving again, as the handle assumes."""
        self.serving = {}

    def has_replica(self, deployment: str) -> bool:
        return deployment not in self._served or self.serving.get(deployment, 1) > 0
