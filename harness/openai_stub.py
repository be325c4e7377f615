"""A small, real OpenAI-compatible server that answers at once: the external endpoint of the tests and benchmarks.

It serves ``/v1/chat/completions`` (whole and streamed), ``/v1/completions``, ``/v1/responses`` and
``/v1/models`` over real HTTP on loopback, so the router's external-model path (pooled client, stream
relay, error pass-through, timeouts, fallback) is exercised end to end without a model behind it. What it
was sent is kept for the tests to read (``GET /stub/requests``), and ``POST /stub/mode`` makes it fail
or stall on purpose. Nothing here is part of the router.

    python -m harness.openai_stub --port 9100 --api-key sk-upstream   # then point an llms entry at it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

WORDS = ("stub", "answer", "from", "an", "instant", "upstream")


class StubState:
    def __init__(self, model: str, api_key: str | None, chunks: int) -> None:
        self.model = model
        self.api_key = api_key
        self.chunks = chunks  # content chunks per streamed answer
        self.fail_status: int | None = None  # answer every request with this status
        self.delay_s = 0.0  # before the first byte
        self.seen: deque[dict[str, Any]] = deque(maxlen=1000)  # recent requests: path, body, auth, peer
        self.peers: set[tuple[str, int]] = set()  # distinct TCP connections seen
        self.requests = 0


def _text(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] + " " for i in range(n)]


def create_app(model: str = "stub-model", api_key: str | None = None, chunks: int = 8) -> FastAPI:
    app = FastAPI()
    state = app.state.stub = StubState(model, api_key, chunks)

    async def admit(request: Request, path: str) -> tuple[dict[str, Any], Response | None]:
        state.requests += 1
        peer = (request.client.host, request.client.port) if request.client else ("?", 0)
        state.peers.add(peer)
        body = await request.json()
        state.seen.append({"path": path, "body": body, "authorization": request.headers.get("authorization"),
                           "peer": list(peer)})
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return body, _error(401, "Incorrect API key provided.", "invalid_api_key")
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.fail_status:
            return body, _error(state.fail_status, f"stub failing with {state.fail_status} on purpose", "stub_failure")
        return body, None

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "stub"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body, refused = await admit(request, "/v1/chat/completions")
        if refused:
            return refused
        n = min(int(body.get("max_tokens") or state.chunks), state.chunks)
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.get("model", state.model)
        usage = {"prompt_tokens": len(json.dumps(body.get("messages"))) // 4, "completion_tokens": n,
                 "total_tokens": len(json.dumps(body.get("messages"))) // 4 + n}
        if not body.get("stream"):
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(_text(n))},
                             "finish_reason": "length" if n < state.chunks else "stop"}],
                "usage": usage})

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                          "model": model, "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}) + "\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            for word in _text(n):
                yield chunk({"content": word})
            yield chunk({}, "length" if n < state.chunks else "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                             "model": model, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body, refused = await admit(request, "/v1/completions")
        if refused:
            return refused
        n = min(int(body.get("max_tokens") or 16), state.chunks)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", state.model),
            "choices": [{"index": 0, "text": "".join(_text(n)), "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        body, refused = await admit(request, "/v1/responses")
        if refused:
            return refused
        text = "".join(_text(min(int(body.get("max_output_tokens") or state.chunks), state.chunks)))
        return JSONResponse({
            "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
            "model": body.get("model", state.model), "status": "completed", "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [],
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex}", "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]})

    # ---- what the tests read and set ----------------------------------------------------------

    @app.get("/stub/requests")
    async def seen() -> dict[str, Any]:
        return {"requests": state.requests, "connections": len(state.peers), "recent": list(state.seen)}

    @app.post("/stub/mode")
    async def mode(request: Request) -> dict[str, Any]:
        body = await request.json()
        state.fail_status = body.get("fail_status")
        state.delay_s = float(body.get("delay_s") or 0)
        if body.get("reset"):
            state.seen.clear()
            state.peers.clear()
            state.requests = 0
        return {"fail_status": state.fail_status, "delay_s": state.delay_s}

    return app


def config_with_stub_llms(config: dict[str, Any], endpoints: dict[str, str]) -> dict[str, Any]:
    """A Serve config (``serve_config.yaml``'s shape) whose every LLM is an external endpoint (name -> base URL,
    the stubs): the router alone, without a vLLM deployment, on loopback."""
    import copy

    from serve_app.config.file import application_index
    from serve_app.config.schema import deployment_name

    config = copy.deepcopy(config)
    config.setdefault("http_options", {})["host"] = "127.0.0.1"
    app = config["applications"][application_index(config)]
    names = [llm["name"] for llm in app["args"]["llms"]]
    app["args"]["llms"] = [{"name": name, "endpoint": endpoints[name], "model": f"stub-{name}"} for name in names]
    engines = {deployment_name(name) for name in names}
    app["deployments"] = [d for d in app["deployments"] if d["name"] not in engines]
    return config


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}},
                        status_code=status)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--model", default="stub-model")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks in a streamed answer")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.model, args.api_key, args.chunks), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
