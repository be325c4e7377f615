"""Ingress deployment: the OpenAI-compatible HTTP front door.

request -> parse -> classify (or honour an explicit model) -> LLM deployment -> response.
Streams are relayed chunk by chunk as the engine produces them; errors leave as OpenAI-style
JSON with the right status, never as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.config import RoutingConfig
from serve_app.errors import OpenAIError, error_body, status_phrase
from serve_app.live_routing import LiveRouting
from serve_app.requests import AUTO_MODEL, Endpoint, parse_json_body, parse_request
from serve_app.routing import LLMTarget, RouteTable, RouteTarget, RoutingDecision
from serve_app.stats import RequestRecord
from serve_app.vllm_engine import EngineReply

logger = logging.getLogger("ray.serve")

app = FastAPI(title="semantic-router", description="One OpenAI endpoint, routed by meaning to a mixture of LLMs.")


@app.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != status_phrase(exc.status_code) else (
        f"{status_phrase(exc.status_code)}: see GET /v1/models and POST /v1/chat/completions")
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error in the router")
    return JSONResponse(error_body(500, f"Internal error in the router: {type(exc).__name__}"), status_code=500)


# Helpers stay above the class: @serve.ingress pickles the class by value, with the globals it sees.
def _routing_headers(decision: RoutingDecision, target: RouteTarget) -> dict[str, str]:
    headers = {"x-router-category": decision.route, "x-router-model": target.served_model,
               "x-router-reason": decision.reason}
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.4f}"
    return headers


def _upstream_error(exc: Exception, target: RouteTarget) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, BackPressureError):
        return OpenAIError(503, f"The {target.route} model is at capacity; retry shortly.", code="overloaded")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return OpenAIError(504, f"The {target.route} model did not answer in time.", code="timeout")
    logger.error("LLM deployment %s failed: %s", target.deployment, exc)
    return OpenAIError(503 if isinstance(exc, (ActorDiedError, ActorUnavailableError)) else 500,
                       f"The {target.route} model failed to answer ({type(exc).__name__}).", code="upstream_error")


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    def __init__(self, classifier: DeploymentHandle, llms: dict[str, DeploymentHandle], stats: DeploymentHandle,
                 llm_targets: list[LLMTarget], request_timeout_s: float) -> None:
        self.classifier = classifier
        self.llms = llms
        self.stats = stats
        self.llm_targets = llm_targets
        self.request_timeout_s = request_timeout_s
        self.live: LiveRouting[tuple[RouteTable, int]] = LiveRouting("Ingress")
        self.updates = Counter("router_routing_updates", "Routing blocks applied or refused (Serve adds the deployment tag).",
                               tag_keys=("result",))
        self.requests = Counter("router_requests", "Routed requests by route and decision reason.",
                                tag_keys=("route", "reason", "status"))
        self.latency = Histogram("router_request_latency_ms", "Time to the full answer or the first stream chunk.",
                                 boundaries=[10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000],
                                 tag_keys=("route",))
        self.classify_latency = Histogram("router_classify_latency_ms", "Time to classify one request.",
                                          boundaries=[1, 2, 5, 10, 20, 50, 100, 250, 1000])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        # The routing block changes on a live deployment (serve deploy) without restarting anything; a request
        # in flight keeps the table it started with.
        applied = self.live.apply(user_config, self._tables)
        self.updates.inc(tags={"result": "refused" if applied is None else "applied"})
        if applied is not None:
            self.table, self.context_turns = applied

    def _tables(self, routing: RoutingConfig) -> tuple[RouteTable, int]:
        return RouteTable.from_config(routing, self.llm_targets), routing.context_turns

    def check_health(self) -> None:
        self.live.require()

    # ---- OpenAI endpoints ------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._route("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._route("completion", request)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        now = int(time.time())
        data = [{"id": AUTO_MODEL, "object": "model", "created": now, "owned_by": "semantic-router",
                 "description": "Routes each request by its content to one of the models below."}]
        for t in self.table.targets.values():
            data.append({
                "id": t.route, "object": "model", "created": now, "owned_by": "semantic-router",
                "root": t.served_model, "served_by": t.served_model, "configured_model": t.configured_model,
                "deployment": t.deployment, "cpu_fallback": t.fallback,
            })
        return {"object": "list", "data": data}

    @app.get("/stats")
    async def stats(self) -> dict[str, Any]:
        return await self.stats.snapshot.remote(list(self.table.targets))

    @app.get("/health")
    async def health(self) -> JSONResponse:
        status = await asyncio.to_thread(serve.status)
        application = status.applications[serve.get_replica_context().app_name]
        deployments = {name: d.status.value for name, d in application.deployments.items()}
        # Scaling up or down is healthy: every deployment has ready replicas serving.
        ready = all(s in ("HEALTHY", "UPSCALING", "DOWNSCALING") for s in deployments.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "application": application.status.value,
                             "deployments": deployments, "routing": self.live.status()},
                            status_code=200 if ready else 503)

    # ---- routing ---------------------------------------------------------------------------------

    async def _route(self, endpoint: Endpoint, request: Request) -> Response:
        started = time.perf_counter()
        table = self.table  # one table for the whole request, even if a routing update lands meanwhile
        try:
            parsed = parse_request(endpoint, parse_json_body(await request.body()), self.context_turns)
            classify_ms = None
            if parsed.model in (None, AUTO_MODEL):
                decision, classify_ms = await self._classify(parsed.routing_texts, table.default_route)
            else:
                decision = RoutingDecision(table.explicit_route(parsed.model), "explicit")
        except OpenAIError as exc:
            self._record(None, "rejected", exc.status, started)
            raise
        if decision.route not in table:
            # The classifier already serves a routing update this replica has not applied yet (or refused).
            decision = RoutingDecision(table.default_route, "unknown_route", decision.score)
        target = table[decision.route]
        headers = _routing_headers(decision, target)
        body = {**parsed.body, "model": target.served_model}
        try:
            replies = self.llms[target.llm].options(stream=True).generate.remote(endpoint, body)
            first: EngineReply = await asyncio.wait_for(replies.__anext__(), self.request_timeout_s)
        except Exception as exc:
            error = _upstream_error(exc, target)
            self._record(decision, decision.reason, error.status, started, classify_ms)
            return JSONResponse(error.body(), status_code=error.status, headers=headers)
        if first.body is not None:
            self._record(decision, decision.reason, first.status, started, classify_ms)
            return JSONResponse(first.body, status_code=first.status, headers=headers)
        return StreamingResponse(self._relay(replies, decision, target, started, classify_ms),
                                 media_type="text/event-stream", headers=headers)

    async def _classify(self, texts: tuple[str, ...], default_route: str) -> tuple[RoutingDecision, float | None]:
        if not texts:
            return RoutingDecision(default_route, "no_text"), None
        started = time.perf_counter()
        try:
            decision = await asyncio.wait_for(self.classifier.classify.remote(texts), 30)
        except Exception:
            # A request is never lost to the classifier: the default route answers it.
            logger.exception("Classifier failed; sending the request to the default route")
            return RoutingDecision(default_route, "classifier_error"), None
        ms = (time.perf_counter() - started) * 1000
        self.classify_latency.observe(ms)
        return decision, ms

    async def _relay(self, replies: Any, decision: RoutingDecision, target: RouteTarget, started: float,
                     classify_ms: float | None) -> AsyncIterator[str]:
        first_ms = None
        status = 200
        try:
            async for chunk in replies:
                if first_ms is None:
                    first_ms = (time.perf_counter() - started) * 1000
                yield chunk
        except asyncio.CancelledError:
            status = 499  # the client went away: stop generating for it
            raise
        except Exception as exc:
            status = 500
            error = _upstream_error(exc, target)
            yield f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"
        finally:
            replies.cancel()
            self._record(decision, decision.reason, status, started, classify_ms, first_ms, stream=True)

    def _record(self, decision: RoutingDecision | None, reason: str, status: int, started: float,
                classify_ms: float | None = None, first_token_ms: float | None = None, stream: bool = False) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        route = decision.route if decision else None
        self.requests.inc(tags={"route": route or "none", "reason": reason, "status": str(status)})
        if route and status < 400:
            self.latency.observe(first_token_ms or latency_ms, tags={"route": route})
        # Fire and forget: statistics never delay an answer.
        self.stats.record.remote(RequestRecord(route, reason, status, latency_ms, classify_ms, first_token_ms, stream))
