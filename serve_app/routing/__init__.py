"""The routing decision: from a request's texts and their embeddings to a route, and from a route to its LLM.

Pure logic, no Ray and no model: the ingress holds one ``Router`` per routing block and the offline
tools (eval, calibrate) build the very same one, so what is measured offline is what serves.
"""
