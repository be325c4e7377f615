"""From a routing decision to an answer: the route table, the route's defaults, the fallback chain, statistics.

Pure logic against the ingress↔LLM protocol (serve_app/llm/protocol.py): no Ray here, so every rule of
fallback, spillover and 429 is tested with in-process fakes of that protocol.
"""
