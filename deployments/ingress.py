"""Ingress deployment: the OpenAI-compatible HTTP front door, and the one owner of the routing block.

A thin shell over pure code: HTTP in -> check the key and parse (serve_app/api) -> embed (in this replica, or
in the Classifier deployment: deployments/classifier.py) and decide (serve_app/routing) -> dispatch down the
route's chain (serve_app/dispatch) -> the LLM (serve_app/llm) -> respond. Streams are relayed chunk by chunk as
the engine produces them; errors leave as OpenAI-style JSON with the right status, never as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.classifier import classifier_client
from serve_app.api.errors import OpenAIError, status_phrase
from serve_app.api.keys import ApiKeys
from serve_app.api.requests import AUTO_MODEL, Endpoint, parse_json_body, parse_request
from serve_app.config.live import LiveConfig
from serve_app.config.schema import ClassifierConfig, RoutingConfig
from serve_app.dispatch.dispatch import Answer, Dispatcher, ms_since
from serve_app.dispatch.routes import RouteTable
from serve_app.dispatch.stats import RequestRecord, RoutingStats
from serve_app.llm.external import ExternalLLM, api_key, http_pool
from serve_app.llm.plan import LLMPlan
from serve_app.llm.protocol import DeploymentLLM, LLMClient
from serve_app.llm.replicas import ReplicaView
from serve_app.routing.decider import Decider, examples_of
from serve_app.routing.policy import RoutingDecision

logger = logging.getLogger("ray.serve")

STATS_REPORT_S = 1.0  # how stale another ingress replica's requests may be in /stats
REPLICAS_POLL_S = 1.0  # how soon an LLM deployment left with no running replica is routed around

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
@dataclass(frozen=True)
class Routing:
    """One routing block, compiled: swapped in one assignment, so a request sees exactly one block."""

    decider: Decider
    table: RouteTable

    @property
    def config(self) -> RoutingConfig:
        return self.table.config


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


def _response(answer: Answer) -> Response:
    if answer.stream is not None:
        return StreamingResponse(answer.stream, media_type="text/event-stream", headers=answer.headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


@serve.deployment
@serve.ingress(app)
class Ingress:
    async def __init__(self, classifier: DeploymentHandle | ClassifierConfig, llms: dict[str, DeploymentHandle],
                       stats: DeploymentHandle, llm_plans: dict[str, LLMPlan]) -> None:
        # The Classifier deployment's handle, or the encoder's config: then it runs in this replica.
        self.classifier = await classifier_client(classifier)
        # In-cluster LLMs through their deployments; external ones through one pooled HTTP client.
        self.http = http_pool()
        self.replicas = ReplicaView()  # which deployments have a replica serving (_watch_replicas_forever)
        self.clients: dict[str, LLMClient] = {
            name: DeploymentLLM(handle, partial(self.replicas.has_replica, llm_plans[name].deployment))
            for name, handle in llms.items()}
        self.clients |= {name: ExternalLLM(self.http, llm, api_key(llm)) for name, llm in llm_plans.items()
                         if llm.external}
        self.llm_plans = llm_plans
        self.routing: Routing | None = None
        self.live = LiveConfig("Ingress", RoutingConfig, "routing block")
        self.stats = RoutingStats()
        self.stats_sink = stats
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._reported = self.stats.version
        self._reporter = asyncio.get_running_loop().create_task(self._report_stats_forever())
        self._watcher = asyncio.get_running_loop().create_task(self._watch_replicas_forever())
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
        self.dispatcher = Dispatcher(self.clients, self._record)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        # The routing block changes on a live deployment (serve deploy) without restarting anything; a request
        # in flight keeps the routing it started with.
        routing = await self.live.apply(user_config, self._compile)
        self.updates.inc(tags={"result": "refused" if routing is None else "applied"})
        if routing is not None:
            self.routing = routing

    async def _compile(self, config: RoutingConfig) -> Routing:
        table = RouteTable(config, self.llm_plans)  # first: a route naming an unknown LLM is refused cheaply
        try:
            embeddings = await self.classifier.embed_examples(examples_of(config))
        except Exception as exc:  # an update the classifier cannot embed now is refused, not fatal
            raise ValueError(f"the classifier could not embed the examples ({type(exc).__name__})") from None
        return Routing(Decider(config, embeddings), table)

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
        return {"object": "list", "data": self.routing.table.model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(self, request: Request, model: str) -> dict[str, Any]:
        self.api_keys.check(request.headers.get("authorization"))
        return self.routing.table.model_card(model)

    @app.get("/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        self.api_keys.check(request.headers.get("authorization"))
        try:
            await self._report_stats()  # this replica's requests are counted up to now
            return await self.stats_sink.snapshot.remote(list(self.routing.table.targets))
        except Exception as exc:
            raise OpenAIError(503, f"Statistics are unavailable right now ({type(exc).__name__}); requests are "
                              "served as usual.", code="stats_unavailable") from None

    @app.get("/health")
    async def health(self) -> JSONResponse:
        status = await asyncio.to_thread(serve.status)
        application = status.applications[serve.get_replica_context().app_name]
        # The same status routes the next requests: once /health says a deployment is back, it is not routed
        # around on a view up to REPLICAS_POLL_S older.
        self.replicas.update({name: d.replica_states for name, d in application.deployments.items()})
        deployments = {name: d.status.value for name, d in application.deployments.items()}
        # Scaling up or down is healthy: every deployment has ready replicas serving.
        ready = all(s in ("HEALTHY", "UPSCALING", "DOWNSCALING") for s in deployments.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "application": application.status.value,
                             "deployments": deployments, "routing": self.live.status()},
                            status_code=200 if ready else 503)

    # ---- routing ---------------------------------------------------------------------------------

    async def _route(self, endpoint: Endpoint, request: Request) -> Response:
        started = time.perf_counter()
        routing = self.routing  # one routing block for the whole request, even if an update lands meanwhile
        try:
            self.api_keys.check(request.headers.get("authorization"))
            body = parse_json_body(await _read_body(request, routing.config.max_request_bytes))
            parsed = parse_request(endpoint, body, routing.config.context_turns)
            if parsed.model in (None, AUTO_MODEL):
                decision, classify_ms = await self._classify(routing, parsed.turns, parsed.system)
            else:
                decision, classify_ms = RoutingDecision(routing.table.explicit_route(parsed.model), "explicit"), None
        except OpenAIError as exc:
            self._record(RequestRecord(None, "rejected", exc.status, ms_since(started)))
            raise
        answer = await self.dispatcher.answer(routing.table, decision, endpoint, parsed, started, classify_ms)
        return _response(answer)

    async def _classify(self, routing: Routing, turns: tuple[str, ...], system: str
                        ) -> tuple[RoutingDecision, float | None]:
        started = time.perf_counter()
        decider = routing.decider
        deadline = started + routing.config.classifier_timeout_s
        reading = decider.start(turns, system)
        try:
            # The turns; rarely then a turn's pair or the system prompt. None at all where there is no text or
            # a keyword decides alone.
            while (texts := reading.next_texts()) is not None:
                reading.add(await self.classifier.embed(texts, deadline - time.perf_counter()))
        except Exception as exc:
            # A request is never lost to the classifier: the default route answers it.
            logger.warning("Classifier failed (%s); the default route answers", type(exc).__name__)
            return RoutingDecision(decider.default_route, "classifier_error"), None
        decision = reading.decision
        if not reading.embedded:  # no classifier call: no classification time, no score
            return decision, None
        ms = ms_since(started)
        self.classify_latency.observe(ms)
        if decision.score is not None:
            self.classify_score.observe(decision.score, tags={"route": decision.route})
        return decision, ms

    # ---- statistics ------------------------------------------------------------------------------

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

    # ---- replicas ---------------------------------------------------------------------------------

    async def _watch_replicas_forever(self) -> None:
        """How many replicas of each deployment run, from Serve's status about once a second."""
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                application = status.applications[serve.get_replica_context().app_name]
                self.replicas.update({name: d.replica_states for name, d in application.deployments.items()})
            except Exception as exc:
                self.replicas.forget()
                logger.debug("Replica states not read: %r", exc)
            await asyncio.sleep(REPLICAS_POLL_S)

    async def _report_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_REPORT_S)
            try:
                await self._report_stats()
            except Exception as exc:  # /stats says so when asked; serving goes on
                logger.debug("Statistics not reported: %r", exc)
