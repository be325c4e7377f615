"""The application's typed configuration. Each setting has one home, chosen by what a change costs:

- ``RouterConfig``: the ``args`` of the application (models, engines, resources, accelerator). Serve
  hashes ``args`` into every deployment's version, so changing them starts new replicas, vLLM engines
  included; only what needs a new engine lives here.
- ``RoutingConfig``: the routing block (routes, examples, thresholds, timeouts), the ``user_config`` of
  the Ingress deployment, its only owner. ``serve deploy`` hands a change to the running replicas'
  ``reconfigure``: routing changes without a restart or a dropped request.
- ``ClassifierBatching``: the ``user_config`` of the Classifier deployment, changed in place likewise.
- Serve's own options (replicas, autoscaling, ``max_ongoing_requests``, ``max_queued_requests``) live in
  the ``deployments:`` section of the Serve config, where Serve changes them in place.

Every model forbids unknown keys, so a typo fails with a message naming the key instead of being
silently ignored; a key that has moved fails with a message naming its new home.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.embedded import EMBEDDED_PREFIX, MINILM, SMOLLM2
from serve_app.llm import kvcached

_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _refuse_moved(data: Any, moved: dict[str, str]) -> Any:
    """A key that used to live here fails with its new home, not a bare 'extra inputs' error."""
    if isinstance(data, dict):
        for key, home in moved.items():
            if key in data:
                raise ValueError(f"{key} has moved: set it in {home}")
    return data


def _not_blank(what: str, texts: list[str]) -> list[str]:
    if any(not t.strip() for t in texts):
        raise ValueError(f"{what} may not be blank")
    return texts


def _compiling(patterns: list[str]) -> list[str]:
    for pattern in _not_blank("patterns", patterns):
        try:
            re.compile(pattern)  # compiles alone, so it compiles inside the whole-word wrapper too
        except re.error as exc:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


INGRESS_USER_CONFIG = ("the routing block (the user_config of the Ingress deployment), where it changes without a "
                       "restart")
CLASSIFIER_USER_CONFIG = "the user_config of the Classifier deployment, where it changes without a restart"


TOOL_ARGS = ("enable_auto_tool_choice", "tool_call_parser", "chat_template")  # vLLM's, owned by tool_calling
TOOL_CALLING_HOME = "tool_calling (parser, chat_template)"


class ToolCalling(StrictModel):
    """What vLLM needs to answer requests with ``tools``: the parser that reads this model's tool calls.

    vLLM 0.29 refuses every request with tools (even ``tool_choice: required`` or a named function) without a
    parser, so a model with no ``tool_calling`` answers such requests with a 400 naming its route.
    """

    parser: str = Field(min_length=1, description="vLLM tool_call_parser for this model, e.g. hermes (Qwen2.5).")
    chat_template: str | None = Field(
        None, description="A Jinja chat template that renders tools, when the model's own does not: a file path, or "
        "the name of one the router ships (chatml_tools: ChatML with Hermes tool calls).")


def _refuse_tool_args(engine_args: dict[str, Any]) -> dict[str, Any]:
    owned = sorted(set(TOOL_ARGS) & engine_args.keys())
    if owned:
        raise ValueError(f"engine_args may not set {owned}: set {TOOL_CALLING_HOME} instead")
    return engine_args


class LLMEntry(StrictModel):
    """One entry of ``llms``: a vLLM deployment (``llm-<name>``), or an OpenAI-compatible endpoint that already runs.

    Several routes may share it. An external entry (``endpoint``) has no deployment: the ingress calls it over
    HTTP, so it needs no GPU and no vLLM in the cluster.
    """

    name: str = Field(pattern=_NAME)
    model: str = Field(min_length=1, description="Weights served on GPU (a Hugging Face id or a local path), or, "
                       "with endpoint, the model id sent to it.")
    endpoint: str | None = Field(
        None, pattern=r"^https?://[^\s/]+", description="An OpenAI-compatible base URL (http://host:port/v1) "
        "that serves this model; no deployment is started for it.")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="With endpoint: the environment variable holding "
        "its API key (never the key itself), read by the Ingress replicas.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM AsyncEngineArgs/FrontendArgs, e.g. max_model_len."
    )
    tool_calling: ToolCalling | None = Field(
        None, description="GPU profile: how this model calls tools (the CPU fallback's model has its own).")
    num_gpus: float = Field(0.3, gt=0, description="GPU share of one replica (fractions share a GPU).")
    num_cpus: float = Field(1.0, ge=0)
    kv_cache_gib: float | None = Field(
        None, gt=0, description="GPU profile: cap on this model's KV cache (vLLM kv_cache_memory_bytes); "
        "with kvcached, the most of the shared pool this model may map.")

    @field_validator("engine_args")
    @classmethod
    def _engine_args_owned_here(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = {"model", "served_model_name"} & value.keys()
        if owned:
            raise ValueError(f"engine_args may not set {sorted(owned)}: use the llm's 'model' field")
        return _refuse_tool_args(value)

    @model_validator(mode="after")
    def _one_kv_cap(self) -> LLMEntry:
        if self.kv_cache_gib is not None and "kv_cache_memory_bytes" in self.engine_args:
            raise ValueError("set kv_cache_gib or engine_args.kv_cache_memory_bytes, not both")
        return self

    @model_validator(mode="after")
    def _external_has_no_engine(self) -> LLMEntry:
        engine_only = sorted({"engine_args", "tool_calling", "num_gpus", "num_cpus", "kv_cache_gib"}
                             & self.model_fields_set)
        if self.endpoint is not None and engine_only:
            raise ValueError(f"llm {self.name!r} has an endpoint, so no engine runs in the cluster for it: remove "
                             f"{engine_only}")
        if self.endpoint is None and self.api_key_env is not None:
            raise ValueError(f"llm {self.name!r} sets api_key_env without an endpoint")
        return self

    @property
    def external(self) -> bool:
        return self.endpoint is not None


class KeywordRules(StrictModel):
    """Whole-word, case-insensitive regular expressions checked before similarity (serve_app/routing/keywords.py)."""

    force: list[str] = Field(default_factory=list, description="A match sends the request here, whatever the scores.")
    exclude: list[str] = Field(default_factory=list, description="A match rules this route out for the request.")

    @field_validator("force", "exclude")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        return _compiling(value)


SAMPLING_DEFAULTS = ("temperature", "top_p", "max_tokens")


class RouteDefaults(StrictModel):
    """What a route adds to every request it answers (serve_app/dispatch/defaults.py applies it).

    A value the client sent wins, unless the key is listed in ``enforce``. The system prompt is not a
    default of that kind: ``system_prompt_mode`` says whether it goes before the client's (``prepend``) or
    replaces the client's system messages (``replace``).
    """

    system_prompt: str | None = Field(None, min_length=1, description="Chat and Responses requests only.")
    system_prompt_mode: Literal["prepend", "replace"] = "prepend"
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="max_output_tokens on the Responses API.")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the chat template, e.g. {enable_thinking: true}.")
    enforce: list[Literal["temperature", "top_p", "max_tokens", "chat_template_kwargs"]] = Field(
        default_factory=list, description="Keys whose route value replaces the client's.")

    @model_validator(mode="after")
    def _enforced_are_set(self) -> RouteDefaults:
        unset = [k for k in self.enforce if getattr(self, k) in (None, {})]
        if unset:
            raise ValueError(f"enforce lists {unset}, which this route's defaults do not set")
        return self


class RouteConfig(StrictModel):
    """A category of requests, declared by example queries, answered by one LLM."""

    name: str = Field(pattern=_NAME)
    llm: str = Field(description="Name of the entry in 'llms' that answers this route.")
    description: str = ""
    examples: list[str] = Field(min_length=1)
    threshold: float | None = Field(None, ge=-1, le=1, description="Overrides the routing block's threshold.")
    keywords: KeywordRules = KeywordRules()
    fallbacks: list[str] | None = Field(
        None, description="Routes that answer, in order, when this route's model cannot before its first token "
        "(dead, timed out, overloaded, failing). Default: the default route. [] for none.")
    defaults: RouteDefaults = Field(
        default_factory=lambda: RouteDefaults(), description="Applied to every request this route answers.")

    @field_validator("examples")
    @classmethod
    def _no_blank_examples(cls, value: list[str]) -> list[str]:
        return _not_blank("examples", value)


class ThreadConfig(StrictModel):
    """How a conversation is read: each user turn in the light of the ones before it (serve_app/routing/policy.py).

    The first turn decides alone; each later turn keeps the conversation's route unless it is confidently
    elsewhere, so a follow-up ("shorter", "now in Rust", "what's the probability then?") and an agent's loop stay
    on one model, and the same thread always gets the same route.
    """

    switch_margin: float = Field(
        0.15, ge=0, le=2, description="A later turn moves the conversation to its own best route only when that "
        "route scores this much above the conversation's route on the turn, and is still the best route when the "
        "turn is read together with the one before it.")
    follow_up: list[str] = Field(
        default_factory=list, description="Turns that only make sense with the thread (shorter, in French, continue, "
        "explain step 2): a turn nearer to these than to any route keeps the conversation's route.")
    switch: list[str] = Field(
        default_factory=list, description="Whole-word, case-insensitive regular expressions that mark a change of "
        "subject (unrelated, different question): the text after the last one is decided alone.")
    strip: list[str] = Field(
        default_factory=list, description="Case-insensitive regular expressions for text an agent framework adds to "
        "user turns (<system-reminder>...</system-reminder>): removed before reading; a turn left empty is skipped.")

    @field_validator("follow_up")
    @classmethod
    def _no_blank_follow_ups(cls, value: list[str]) -> list[str]:
        return _not_blank("follow_up examples", value)

    @field_validator("switch", "strip")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        return _compiling(value)


class RoutingConfig(StrictModel):
    """The routing block: the ``user_config`` of the Ingress deployment, the one owner of routing."""

    default_route: str = Field("general", description="Answers requests no route is confident about.")
    threshold: float = Field(0.2, ge=-1, le=1, description="Below this score a request goes to the default route.")
    top_k: int = Field(5, ge=1, description="A route's score is the mean similarity of its k nearest examples.")
    context_turns: int = Field(3, ge=1, description="User turns the decision reads: the last one and those before it.")
    thread: ThreadConfig = Field(default_factory=lambda: ThreadConfig(), description="How a conversation is read.")
    request_timeout_s: float = Field(
        600, gt=0, description="Longest wait for an LLM to start answering: a stream's first chunk, or a whole answer "
        "(which arrives in one piece). Past it, the route's fallback is asked, else 504. A started stream is not cut.")
    classifier_timeout_s: float = Field(
        10, gt=0, description="Longest wait for the classifier; past it the default route answers.")
    fallback_explicit: bool = Field(
        False, description="Also send a request that names its model to the route's fallbacks.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 429, when every model that could answer is full.")
    max_request_bytes: int = Field(4 << 20, ge=1024, description="Larger request bodies get 413.")
    routes: list[RouteConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_resolve(self) -> RoutingConfig:
        _unique("routes", [route.name for route in self.routes])
        names = {r.name for r in self.routes}
        if "auto" in names:
            raise ValueError("'auto' is reserved for classified requests and cannot name a route")
        if self.default_route not in names:
            raise ValueError(f"default_route {self.default_route!r} is not a route; routes are {sorted(names)}")
        for route in self.routes:
            unknown = sorted(set(route.fallbacks or ()) - names)
            if unknown:
                raise ValueError(f"route {route.name!r} falls back to {unknown}, which are not routes")
            if route.name in (route.fallbacks or ()):
                raise ValueError(f"route {route.name!r} cannot fall back to itself")
        return self

    def fallbacks(self, route: str) -> list[str]:
        """The routes that answer, in order, when ``route``'s model cannot."""
        given = self.route(route).fallbacks
        if given is not None:
            return list(given)
        return [] if route == self.default_route else [self.default_route]

    def route(self, name: str) -> RouteConfig:
        return next(r for r in self.routes if r.name == name)


class ClassifierBatching(StrictModel):
    """The ``user_config`` of the Classifier deployment: how concurrent requests share one encoder call."""

    max_batch_size: int = Field(32, ge=1, description="Texts embedded in one call; keep <= max_ongoing_requests.")
    # 0: a lone request never waits, and under load batches still form from the requests that arrive while
    # a batch computes. A 5 ms wait cost a lone request 5-7 ms through the deployment (bench_classifier.py).
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="Longest a text waits for others to join its batch.")

    @model_validator(mode="before")
    @classmethod
    def _not_routing(cls, data: Any) -> Any:
        if isinstance(data, dict) and "routes" in data:
            raise ValueError("the routing block is read from the Ingress deployment's user_config only: remove "
                             "`user_config: *routing` from the Classifier deployment (its user_config takes "
                             "max_batch_size and batch_wait_timeout_s)")
        return data


ClassifierBackend = Literal["torch", "onnx", "openvino", "auto"]
ClassifierPlacement = Literal["auto", "ingress", "deployment"]
# Routing reads the start of a prompt: at 128 tokens the dev set's macro-F1 is that at 256 and long prompts
# cost less (bench/results/classifier.json).
DEFAULT_MAX_SEQ_LENGTH = 128


class ClassifierConfig(StrictModel):
    """The embedding model and what its replicas ask of Ray; routing decisions are the ingress's."""

    model: str = Field(f"{EMBEDDED_PREFIX}{MINILM}", description="sentence-transformers model: path, id or embedded.")
    backend: ClassifierBackend = Field(
        "auto", description="What runs the model: torch, onnx (ONNX Runtime, int8 on CPUs with VNNI), openvino "
        "(bf16 on CPUs with bf16 units), or auto: torch on a GPU, else the fastest for this CPU (logged, with why).")
    max_seq_length: int = Field(
        DEFAULT_MAX_SEQ_LENGTH, ge=8, le=512, description="Tokens read from the start of each text; the rest of a "
        "long prompt does not change its route.")
    placement: ClassifierPlacement = Field(
        "auto", description="Where the encoder runs: ingress (inside each Ingress replica: no hop, and it scales "
        "with the ingress), deployment (the Classifier deployment, batching every ingress replica's requests on its "
        "GPU share), or auto: deployment where the classifier gets a GPU (or the GPU stand-in), ingress on a CPU.")
    threads: int = Field(
        2, ge=0, description="On a CPU backend (onnx, openvino): how many encoder calls run at once (each a "
        "batch of the requests waiting), each on one thread of its own; 0: the library's default, every core on "
        "one call at a time. A query of a few dozen tokens gains little from a second core shared with the rest "
        "of the router, and pays CPU to keep the threads in step; two calls side by side use both.")
    cache_size: int = Field(
        4096, ge=0, description="Texts whose embeddings each replica that embeds keeps (least recently used go "
        "first; 1.5 KiB each for a 384-dimension model): a conversation re-sends its earlier turns and an agent's "
        "tool loop its user turns at every step, and a seen text is not embedded again. 0: no cache.")
    num_gpus: float = Field(0.1, ge=0, description="GPU share on the GPU profile.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs on the GPU profile.")

    @model_validator(mode="before")
    @classmethod
    def _batching_moved(cls, data: Any) -> Any:
        return _refuse_moved(data, {k: CLASSIFIER_USER_CONFIG for k in ClassifierBatching.model_fields})


class CPUFallbackConfig(StrictModel):
    """What every LLM deployment serves when the cluster has no GPU (and on accelerator: cpu)."""

    model: str = f"{EMBEDDED_PREFIX}{SMOLLM2}"
    engine_args: dict[str, Any] = Field(default_factory=lambda: {"dtype": "float32", "max_model_len": 2048})
    tool_calling: ToolCalling | None = Field(
        default_factory=lambda: ToolCalling(parser="hermes", chat_template="chatml_tools"),
        description="SmolLM2's own template renders no tools: the shipped ChatML template with Hermes calls does.")
    kv_cache_space_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE: allocated up front per engine.")
    llm_num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per LLM replica.")
    small_num_cpus: float = Field(0.05, ge=0, description="Ray CPUs per ingress, classifier and stats replica.")
    gpu_stand_in: str | None = Field(
        None, min_length=1, description="A custom Ray resource that stands for the GPU on a cluster without one "
        "(the local multi-node cluster's LLM node type declares it, docs/cluster.md). When the cluster has it, "
        "each LLM replica and the classifier ask for their GPU-profile share (num_gpus) of it, so they land on "
        "the node types the GPU profile puts them on; on a cluster without it, it is ignored.")

    @field_validator("engine_args")
    @classmethod
    def _tool_args_owned_here(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _refuse_tool_args(value)


class KvcachedConfig(StrictModel):
    """kvcached: elastic KV cache, so the LLM engines on one GPU share its memory as load comes and goes.

    GPU profile only (ignored, with a log line, on the CPU fallback). Needs the kvcached package in every GPU
    replica's environment: see docs/gpu.md.
    """

    enabled: bool = False
    gpu_utilization: float = Field(
        0.95, gt=0, le=1, description="KVCACHED_GPU_UTILIZATION: share of the GPU all engines together may fill. "
        "Lowered to 1 - classifier.num_gpus while the classifier shares the GPU.")
    contiguous_layout: bool = Field(
        False, description="KVCACHED_CONTIGUOUS_LAYOUT: the contiguous layout costs about 30% throughput on GQA "
        "models.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Other KVCACHED_* variables, e.g. KVCACHED_LOG_LEVEL: DEBUG.")

    @field_validator("env")
    @classmethod
    def _only_other_kvcached_vars(cls, value: dict[str, str]) -> dict[str, str]:
        foreign = sorted(k for k in value if not k.startswith("KVCACHED_"))
        if foreign:
            raise ValueError(f"env takes KVCACHED_* variables only, not {foreign}")
        owned = sorted(kvcached.OWNED_ENV & value.keys())
        if owned:
            raise ValueError(f"env may not set {owned}: they come from the fields above or are set per replica")
        return value


class RouterConfig(StrictModel):
    """Top level of the application ``args``: the serving graph."""

    accelerator: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="auto: GPU if the Ray cluster has GPUs when the app is built, else the CPU fallback."
    )
    classifier: ClassifierConfig = ClassifierConfig()
    llms: list[LLMEntry] = Field(min_length=1)
    cpu_fallback: CPUFallbackConfig = CPUFallbackConfig()
    kvcached: KvcachedConfig = KvcachedConfig()

    @model_validator(mode="before")
    @classmethod
    def _timeouts_moved(cls, data: Any) -> Any:
        return _refuse_moved(data, {"request_timeout_s": INGRESS_USER_CONFIG})

    @model_validator(mode="after")
    def _llm_names_unique(self) -> RouterConfig:
        _unique("llms", [llm.name for llm in self.llms])
        return self


class AppConfig(StrictModel):
    """One application of the Serve config file as a whole: what the offline tools and checks read."""

    router: RouterConfig
    routing: RoutingConfig
    batching: ClassifierBatching = ClassifierBatching()

    @model_validator(mode="after")
    def _routes_name_llms(self) -> AppConfig:
        check_route_llms(self.routing, [llm.name for llm in self.router.llms])
        unused = {llm.name for llm in self.router.llms} - {r.llm for r in self.routing.routes}
        if unused:
            raise ValueError(f"llms {sorted(unused)} serve no route; remove them or point a route at them")
        return self


def check_route_llms(routing: RoutingConfig, llm_names: list[str]) -> None:
    """Every route must name an LLM the application serves (checked again by each live update)."""
    for route in routing.routes:
        if route.llm not in llm_names:
            raise ValueError(f"route {route.name!r} names llm {route.llm!r}, which is not in llms {sorted(llm_names)}")


def _unique(what: str, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} has two entries named {name!r}")
        seen.add(name)


def deployment_name(llm_name: str) -> str:
    return f"llm-{llm_name}"
