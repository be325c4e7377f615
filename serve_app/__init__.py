"""The semantic router's pure logic, in the order a request meets it (Ray lives in deployments/):

api/       the OpenAI surface: request parsing, errors, API keys
routing/   the decision: the encoder, each route's examples, keywords and thresholds
dispatch/  from a decision to an answer: route table, route defaults, fallback chain, statistics
llm/       the models that answer: the ingress<->LLM protocol, vLLM's engine, external endpoints, kvcached
config/    the typed configuration, live updates, and the plan of what each deployment asks of Ray
tools/     offline, never on the serving path: eval, calibrate, placement, config check
"""
