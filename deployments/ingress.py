"""Ingress deployment: the OpenAI-compatible HTTP front door, and the one owner of the routing block.

request -> parse (serve_app/requests.py) -> embed (Classifier) -> decide (serve_app/routing/router.py)
-> LLM deployment (serve_app/llm_protocol.py) -> response. Streams are relayed chunk by chunk as the
engine produces them; errors leave as OpenAI-style JSON with the right status, never as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, TaskCancelledError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api_keys import ApiKeys
from serve_app.config import RoutingConfig
from serve_app.errors import OpenAIError, status_phrase
from serve_app.external_llm import ExternalLLM, api_key, http_pool
from serve_app.live_config import LiveConfig
from serve_app.llm_protocol import DeploymentLLM, LLMClient, LLMOverloaded, LLMRequest, LLMUnavailable
from serve_app.plan import LLMPlan
from serve_app.request_stats import RequestRecord, RoutingStats
from serve_app.requests import AUTO_MODEL, Endpoint, parse_json_body, parse_request
from serve_app.route_defaults import apply_defaults
from serve_app.routing.policy import RoutingDecision
from serve_app.routing.router import Router, examples_of

logger = logging.getLogger("ray.serve")

STATS_REPORT_S = 1.0  # how stale another ingress replica's requests may be in /stats
T = TypeVar("T")

app = FastAPI(title="semantic-router", description="One OpenAI endpoint, routed by meaning to a mixture of LLMs.")


@app.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) and exc.detail != status_phrase(exc.status_code) else (
        f"{status_phrase(exc.status_code)}: see GET /v1/models and POST /v1/chat/completions")
    return await _openai_error(_, OpenAIError(exc.status_code, message))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> Response:
    if isinstance(exc, TaskCancelledError):
        # The client hung up and Serve cancelled its request (often just as a stream ended): nobody to answer.
        logger.info("Request cancelled: the client disconnected")
        return Response(status_code=499)
    logger.exception("Unhandled error in the router")
    return await _openai_error(_, OpenAIError(500, f"Internal error in the router: {type(exc).__name__}"))


# Helpers stay above the class: @serve.ingress pickles the class by value, with the globals it sees.
def _routing_headers(route: str, decision: RoutingDecision, target: LLMPlan) -> dict[str, str]:
    """Which route answered (after any fallback), what answered it, and why the request was routed as it was."""
    headers = {"x-router-category": route, "x-router-model": target.served_model,
               "x-router-reason": decision.reason}
    if decision.score is not None:
        headers["x-router-score"] = f"{decision.score:.4f}"
    return headers


def _failure(exc: BaseException, route: str) -> tuple[str | None, OpenAIError]:
    """Why a route's model did not answer (None: the request itself is wrong) and what a client would be told."""
    if isinstance(exc, OpenAIError):  # the LLM's own answer (Ray wraps it in RayTaskError: take the fields)
        error = OpenAIError(exc.status, exc.message, code=exc.code, param=exc.param, type=exc.type)
        return (None if error.status < 500 else "error"), error
    if isinstance(exc, (BackPressureError, LLMOverloaded)):
        return "overloaded", OpenAIError(503, f"The {route} model is at capacity; retry shortly.", code="overloaded")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", OpenAIError(504, f"The {route} model did not answer in time.", code="timeout")
    if isinstance(exc, (ActorDiedError, ActorUnavailableError, LLMUnavailable)):
        logger.warning("The %s model is unreachable: %s", route, type(exc).__name__)
        return "unavailable", OpenAIError(503, f"The {route} model's replica is unavailable; retry shortly.",
                                          code="upstream_error")
    logger.error("The %s model failed: %r", route, exc)
    return "error", OpenAIError(500, f"The {route} model failed to answer ({type(exc).__name__}).",
                                code="upstream_error")


def _no_answer(failed: list[tuple[str, str]], errors: list[OpenAIError], retry_after_s: int) -> OpenAIError:
    """What a client is told when no model of its chain answered: 429 if capacity was the problem."""
    if any(cause == "overloaded" for _, cause in failed):
        routes = ", ".join(route for route, _ in failed)
        return OpenAIError(429, f"Every model that could answer this request is at capacity ({routes}); retry after "
                           f"{retry_after_s}s.", code="overloaded")
    return errors[0]


def _stream_error(endpoint: Endpoint, error: OpenAIError) -> str:
    """The last event of a stream that failed after its first chunk, in the endpoint's own stream format."""
    if endpoint == "responses":
        event = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return f"event: error\ndata: {json.dumps(event)}\n\n"
    return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"


def _fallback_headers(failed: list[tuple[str, str]]) -> dict[str, str]:
    if not failed:
        return {}
    return {"x-router-fallback": ",".join(route for route, _ in failed),
            "x-router-fallback-cause": ",".join(cause for _, cause in failed)}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = OpenAIError(413, f"The request body is larger than {limit} bytes (max_request_bytes).",
                            code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def _within(awaitable: Awaitable[T], timeout_s: float, response: Any) -> T:
    """Await a deployment's answer for at most ``timeout_s``; on a timeout or a cancelled request, stop its work."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except BaseException:
        response.cancel()
        raise


@serve.deployment
@serve.ingress(app)
class Ingress:
    async def __init__(self, classifier: DeploymentHandle, llms: dict[str, DeploymentHandle],
                       stats: DeploymentHandle, llm_plans: dict[str, LLMPlan]) -> None:
        self.classifier = classifier
        # In-cluster LLMs through their deployments; external ones through one pooled HTTP client.
        self.http = http_pool()
        self.clients: dict[str, LLMClient] = {name: DeploymentLLM(handle) for name, handle in llms.items()}
        self.clients |= {name: ExternalLLM(self.http, llm, api_key(llm)) for name, llm in llm_plans.items()
                         if llm.external}
        self.llm_plans = llm_plans
        self.router: Router | None = None
        self.live = LiveConfig("Ingress", RoutingConfig, "routing block")
        self.stats = RoutingStats()
        self.stats_sink = stats
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._reported = self.stats.version
        self._reporter = asyncio.get_running_loop().create_task(self._report_stats_forever())
        self.updates = Counter("router_routing_updates", "Routing blocks applied or refused (Serve adds the "
                               "deployment tag).", tag_keys=("result",))
        self.requests = Counter("router_requests", "Routed requests by route and decision reason.",
                                tag_keys=("route", "reason", "status"))
        self.latency = Histogram("router_request_latency_ms", "Time to the full answer or the first stream chunk.",
                                 boundaries=[10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000],
                                 tag_keys=("route",))
        self.classify_latency = Histogram("router_classify_latency_ms", "Time to classify one request.",
                                          boundaries=[1, 2, 5, 10, 20, 50, 100, 250, 1000])
        self.classify_score = Histogram("router_classify_score", "The winning route's similarity score.",
                                        boundaries=[0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8],
                                        tag_keys=("route",))
        self.fallbacks = Counter("router_fallbacks", "A route's model could not answer before its first token; "
                                 "to_route answered it (none: no model did). cause overloaded is a spillover.",
                                 tag_keys=("route", "to_route", "cause"))
        self.rejections = Counter("router_rejections", "429s: every model that could answer was at capacity.",
                                  tag_keys=("route",))
        self.api_keys = ApiKeys.from_env()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # The routing block changes on a live deployment (serve deploy) without restarting anything; a request
        # in flight keeps the router it started with.
        router = await self.live.apply(user_config, self._build_router)
        self.updates.inc(tags={"result": "refused" if router is None else "applied"})
        if router is not None:
            self.router = router

    async def _build_router(self, routing: RoutingConfig) -> Router:
        try:
            embeddings = await self.classifier.embed_examples.remote(examples_of(routing))
        except Exception as exc:  # an update the classifier cannot embed now is refused, not fatal
            raise ValueError(f"the classifier could not embed the examples ({type(exc).__name__})") from None
        return Router(routing, embeddings, self.llm_plans)

    def check_health(self) -> None:
        self.live.require("set the Ingress deployment's user_config in the Serve config (see serve_config.yaml)")

    # ---- OpenAI endpoints ------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._route("chat", request)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._route("completion", request)

    @app.post("/v1/responses")
    async def responses(self, request: Request) -> Response:
        return await self._route("responses", request)

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self.api_keys.check(request.headers.get("authorization"))
        return {"object": "list", "data": self._model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(self, request: Request, model: str) -> dict[str, Any]:
        """One model by any name a request may use: ``auto``, a route, or a route's served model id."""
        self.api_keys.check(request.headers.get("authorization"))
        cards = {card["id"]: card for card in self._model_cards()}
        return cards.get(model) or cards[self.router.explicit_route(model)]  # explicit_route 404s the unknown

    def _model_cards(self) -> list[dict[str, Any]]:
        now = int(time.time())
        cards = [{"id": AUTO_MODEL, "object": "model", "created": now, "owned_by": "semantic-router",
                  "description": "Routes each request by its content to one of the models below."}]
        for route, t in self.router.targets.items():
            cards.append({
                "id": route, "object": "model", "created": now, "owned_by": "semantic-router",
                "root": t.served_model, "served_by": t.served_model, "configured_model": t.configured_model,
                "backend": "external" if t.external else "vllm", "endpoint": t.endpoint,
                "deployment": t.deployment, "cpu_fallback": t.cpu_fallback, "tools": t.tools,
            })
        return cards

    @app.get("/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        self.api_keys.check(request.headers.get("authorization"))
        try:
            await self._report_stats()  # this replica's requests are counted up to now
            return await self.stats_sink.snapshot.remote(list(self.router.targets))
        except Exception as exc:
            raise OpenAIError(503, f"Statistics are unavailable right now ({type(exc).__name__}); requests are "
                              "served as usual.", code="stats_unavailable") from None

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
        router = self.router  # one router for the whole request, even if a routing update lands meanwhile
        try:
            self.api_keys.check(request.headers.get("authorization"))
            body = parse_json_body(await _read_body(request, router.config.max_request_bytes))
            parsed = parse_request(endpoint, body, router.config.context_turns)
            if parsed.model in (None, AUTO_MODEL):
                decision, classify_ms = await self._classify(router, parsed.routing_texts)
            else:
                decision, classify_ms = RoutingDecision(router.explicit_route(parsed.model), "explicit"), None
        except OpenAIError as exc:
            self._record(RequestRecord(None, "rejected", exc.status, _ms_since(started)))
            raise
        try:
            chain = router.chain(decision.route, explicit=decision.reason == "explicit", tools=parsed.tools)
        except OpenAIError as exc:  # tools sent to a route whose model cannot call them
            self._finish(decision.route, decision, started, classify_ms, [], exc.status)
            return JSONResponse(exc.body(), status_code=exc.status,
                                headers=_routing_headers(decision.route, decision, router.targets[decision.route]))
        # The decided route first, then its fallbacks, until a model answers (streams: its first chunk).
        failed: list[tuple[str, str]] = []
        errors: list[OpenAIError] = []
        for route in chain:
            target = router.targets[route]
            record = partial(self._finish, route, decision, started, classify_ms, failed)
            headers = {**_routing_headers(route, decision, target), **_fallback_headers(failed)}
            # The answering route's defaults, applied to what the client sent (not to a failed route's version).
            sent = apply_defaults(endpoint, parsed.body, router.defaults[route])
            llm_request = LLMRequest(endpoint, {**sent, "model": target.served_model}, parsed.stream)
            try:
                first, chunks = await self._first_reply(target, llm_request, router.config.request_timeout_s)
            except asyncio.CancelledError:
                record(499)  # the client went away before the first token
                raise
            except Exception as exc:
                cause, error = _failure(exc, route)
                if cause is None:  # the request itself is wrong: another model would refuse it too
                    record(error.status)
                    return JSONResponse(error.body(), status_code=error.status, headers=headers)
                failed.append((route, cause))
                errors.append(error)
                continue
            if not parsed.stream:
                record(200)
                return JSONResponse(first, headers=headers)
            record = partial(record, first_token_ms=_ms_since(started), stream=True)
            return StreamingResponse(self._relay(endpoint, first, chunks, route, record),
                                     media_type="text/event-stream", headers=headers)
        error = _no_answer(failed, errors, router.config.retry_after_s)
        headers = {**_routing_headers(decision.route, decision, router.targets[decision.route]),
                   **_fallback_headers(failed)}
        if error.status == 429:
            headers["retry-after"] = str(router.config.retry_after_s)
        self._finish(decision.route, decision, started, classify_ms, failed, error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    async def _first_reply(self, target: LLMPlan, request: LLMRequest, timeout_s: float) -> tuple[Any, Any]:
        """The whole answer, or a stream's first chunk and the stream; raises what kept the model from answering."""
        client = self.clients[target.llm]
        if request.stream:
            chunks = client.stream(request)
            return await _within(chunks.__anext__(), timeout_s, chunks), chunks
        response = client.complete(request)
        return await _within(response, timeout_s, response), None

    async def _classify(self, router: Router, texts: tuple[str, ...]) -> tuple[RoutingDecision, float | None]:
        if not texts:
            return RoutingDecision(router.default_route, "no_text"), None
        started = time.perf_counter()
        response = self.classifier.embed.remote(texts)
        try:
            embeddings = await _within(response, router.config.classifier_timeout_s, response)
        except Exception as exc:
            # A request is never lost to the classifier: the default route answers it.
            logger.warning("Classifier failed (%s); the default route answers", type(exc).__name__)
            return RoutingDecision(router.default_route, "classifier_error"), None
        ms = _ms_since(started)
        decision = router.decide(texts, embeddings)
        self.classify_latency.observe(ms)
        if decision.score is not None:
            self.classify_score.observe(decision.score, tags={"route": decision.route})
        return decision, ms

    async def _relay(self, endpoint: Endpoint, first: str, chunks: Any, route: str, record: Any) -> AsyncIterator[str]:
        status = 200
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except asyncio.CancelledError:
            status = 499  # the client went away: stop generating for it
            raise
        except Exception as exc:  # after the first token the status is sent: end the stream with an error event
            status = (error := _failure(exc, route)[1]).status
            yield _stream_error(endpoint, error)
        finally:
            chunks.cancel()
            record(status)

    # ---- statistics ------------------------------------------------------------------------------

    def _finish(self, route: str, decision: RoutingDecision, started: float, classify_ms: float | None,
                failed: list[tuple[str, str]], status: int, first_token_ms: float | None = None,
                stream: bool = False) -> None:
        self._record(RequestRecord(route, decision.reason, status, _ms_since(started), classify_ms, first_token_ms,
                                   stream, tuple(failed)))

    def _record(self, r: RequestRecord) -> None:
        """The one place a request is recorded: Prometheus metrics and this replica's /stats share it."""
        self.requests.inc(tags={"route": r.route or "none", "reason": r.reason, "status": str(r.status)})
        if r.route and r.status < 400:
            self.latency.observe(r.first_token_ms or r.latency_ms, tags={"route": r.route})
        for failed_route, cause in r.failed:
            self.fallbacks.inc(tags={"route": failed_route, "to_route": r.route if r.status < 400 else "none",
                                     "cause": cause})
        if r.status == 429:
            self.rejections.inc(tags={"route": r.route or "none"})
        self.stats.record(r)

    async def _report_stats(self) -> None:
        version = self.stats.version
        if version != self._reported:
            # A copy: the handle may serialise it on another thread while this one records more requests.
            await self.stats_sink.report.remote(self.replica_id, RoutingStats.merged([self.stats]))
            self._reported = version

    async def _report_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_REPORT_S)
            try:
                await self._report_stats()
            except Exception as exc:  # /stats says so when asked; serving goes on
                logger.debug("Statistics not reported: %r", exc)
