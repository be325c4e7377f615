"""The models that answer: the ingress<->LLM protocol, vLLM's own serving code, external endpoints, kvcached."""
