"""The routing decision: from a request's texts to a route.

Pure logic around one model: the encoder (serve_app/routing/encoder.py) turns texts into unit vectors,
and ``Decider`` scores them against each route's examples (examples.py), applies keyword rules
(keywords.py) and thresholds (policy.py). The classifier deployment runs the encoder; the ingress runs
the decision; the offline tools run both in one process, so what is measured offline is what serves.
"""
