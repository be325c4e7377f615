"""What reaches Ray for each accelerator: resources, engine models and environment."""

from __future__ import annotations

import copy
import logging

import pytest

from serve_app.config.graph import (
    CLASSIFIER,
    GIB,
    HEAD_RESOURCE,
    INGRESS,
    SERVE_FAST_PATH_ENV,
    plan,
    resolve_accelerator,
    resolve_stand_in,
)
from serve_app.config.schema import RouterConfig
from serve_app.llm import kvcached
from serve_app.tools.placement import describe, main, placement_text

LLMS = ("llm-code", "llm-math", "llm-general")
KVCACHED_ENV = {"ENABLE_KVCACHED": "true", "KVCACHED_AUTOPATCH": "1", "KVCACHED_CONTIGUOUS_LAYOUT": "false",
                "KVCACHED_GPU_UTILIZATION": "0.9"}


def test_auto_picks_gpu_only_when_the_cluster_has_one():
    assert resolve_accelerator("auto", 0) == "cpu"
    assert resolve_accelerator("auto", 4) == "gpu"
    assert resolve_accelerator("gpu", 0) == "gpu"
    assert resolve_accelerator("cpu", 8) == "cpu"


def test_the_gpu_stand_in_places_the_cpu_profile_as_the_gpu_profile(router_args):
    config = RouterConfig.model_validate(router_args)
    assert config.cpu_fallback.gpu_stand_in == "local_gpu"  # serve_config.yaml: the local cluster's node type
    assert resolve_stand_in(config, "cpu", {"CPU": 16, "local_gpu": 1}) == "local_gpu"
    assert resolve_stand_in(config, "cpu", {"CPU": 2}) is None  # one machine: placed by CPUs alone
    assert resolve_stand_in(config, "gpu", {"GPU": 1, "local_gpu": 1}) is None  # real GPUs need no stand-in
    gpu, cpu = plan(config, "gpu"), plan(config, "cpu", "local_gpu")
    for name, llm in cpu.llms.items():  # the CPU engine, asking for the GPU profile's share of the stand-in
        share = gpu.llms[name].ray_actor_options["num_gpus"]
        assert llm.ray_actor_options == {"num_cpus": 0.5, "resources": {"local_gpu": share}}
        assert llm.cpu_fallback
    assert cpu.ray_actor_options[CLASSIFIER]["resources"] == {"local_gpu": 0.1}
    for p in (gpu, cpu):  # the ingress and stats stay on the CPU head, as on GPUs
        assert p.ray_actor_options[INGRESS]["resources"] == {HEAD_RESOURCE: 0.001}
    assert "resources" not in plan(config, "cpu").ray_actor_options[INGRESS]  # one machine: nothing to pin
    assert "resources" not in plan(config, "cpu").llms["code"].ray_actor_options


def test_gpu_plan_uses_configured_models_and_fractions(router_args):
    p = plan(RouterConfig.model_validate(router_args), "gpu")
    code = p.llms["code"]
    assert code.ray_actor_options == {"num_cpus": 2, "num_gpus": 0.3}
    assert code.model == "deepseek-ai/deepseek-coder-1.3b-instruct"
    assert code.engine_args["max_model_len"] == 4096
    assert p.ray_actor_options[CLASSIFIER]["num_gpus"] == 0.1
    actors = [*p.ray_actor_options.values(), *(t.ray_actor_options for t in p.llms.values())]
    gpus = sum(a.get("num_gpus", 0) for a in actors)
    assert gpus <= 1.0  # the whole graph shares one GPU
    assert not any(t.cpu_fallback for t in p.llms.values())


def test_cpu_plan_falls_back_to_the_embedded_model(router_args):
    p = plan(RouterConfig.model_validate(router_args), "cpu")
    for d in p.llms.values():
        assert "num_gpus" not in d.ray_actor_options
        assert d.model == "embedded:SmolLM2-135M-Instruct"
        assert d.served_model == "SmolLM2-135M-Instruct" and d.cpu_fallback
        assert d.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert d.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    actors = [*p.ray_actor_options.values(), *(d.ray_actor_options for d in p.llms.values())]
    assert sum(a["num_cpus"] for a in actors) <= 2  # fits a 2-core box


# ---- the GPU profile, as serve_config.yaml ships it ---------------------------------------------------------

@pytest.fixture
def gpu_views(serve_config):
    return {v.name: v for v in describe(serve_config["applications"][0], "gpu")}


def test_gpu_profile_resources_per_deployment(gpu_views):
    classifier = gpu_views["Classifier"].ray_actor_options
    assert (classifier["num_cpus"], classifier["num_gpus"]) == (1, 0.1)
    for name in LLMS:
        assert gpu_views[name].ray_actor_options == {"num_cpus": 2, "num_gpus": 0.3}
    for name in ("Ingress", "StatsAggregator"):
        assert "num_gpus" not in gpu_views[name].ray_actor_options


def test_the_routers_own_deployments_run_on_the_replica_loop(router_args, monkeypatch):
    """Serve's throughput-optimised threading reaches the ingress, classifier and stats actors (and what
    `serve run`'s environment says wins); the vLLM replicas keep Serve's defaults."""
    monkeypatch.delenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", raising=False)
    monkeypatch.delenv("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", raising=False)
    for accelerator in ("cpu", "gpu"):
        p = plan(RouterConfig.model_validate(router_args), accelerator)
        for actor in p.ray_actor_options.values():
            assert actor["runtime_env"]["env_vars"] == SERVE_FAST_PATH_ENV
        assert all("runtime_env" not in llm.ray_actor_options for llm in p.llms.values())
    monkeypatch.setenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "1")
    p = plan(RouterConfig.model_validate(router_args), "cpu")
    env = p.ray_actor_options[INGRESS]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "1"


def test_the_classifier_runs_in_the_ingress_on_a_cpu_and_in_its_deployment_on_a_gpu(router_args):
    """placement auto follows the accelerator: the stand-in places it as a GPU would; a set placement wins."""
    config = RouterConfig.model_validate(router_args)
    assert config.classifier.placement == "auto"
    for accelerator, stand_in, expected in (("cpu", None, "ingress"), ("cpu", "local_gpu", "deployment"),
                                            ("gpu", None, "deployment")):
        p = plan(config, accelerator, stand_in)
        assert p.classifier_placement == expected
        assert (CLASSIFIER in p.ray_actor_options) == (expected == "deployment")
        assert placement_text(config, accelerator, stand_in).startswith(
            "classifier: inside each Ingress replica" if expected == "ingress" else "classifier: in the Classifier")
    for placement in ("ingress", "deployment"):
        args = copy.deepcopy(router_args)
        args["classifier"]["placement"] = placement
        forced = RouterConfig.model_validate(args)
        assert {plan(forced, a).classifier_placement for a in ("cpu", "gpu")} == {placement}
        assert f"(placement {placement})" in placement_text(forced, "cpu", None)


def test_each_llm_autoscales_on_its_own(gpu_views):
    # A burst of code questions scales llm-code only: each LLM has its own autoscaling config, the rest are fixed.
    for name in LLMS:
        a = gpu_views[name].autoscaling
        assert (a.min_replicas, a.max_replicas, a.target_ongoing_requests) == (1, 2, 16)
        assert (a.upscale_delay_s, a.downscale_delay_s) == (30, 900)  # cold starts are minutes: slow to let go
    for name in ("Ingress", "Classifier", "StatsAggregator"):
        assert gpu_views[name].autoscaling is None and gpu_views[name].replicas == (1, 1)
    gpus_at_min = sum(v.ray_actor_options.get("num_gpus", 0) * v.replicas[0] for v in gpu_views.values())
    assert gpus_at_min == pytest.approx(1.0)  # the whole graph on one GPU until something scales


def test_gpu_profile_engines_run_kvcached_without_prefix_caching(gpu_views):
    for name in LLMS:
        view = gpu_views[name]
        assert KVCACHED_ENV.items() <= view.env.items()
        assert view.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert view.per_replica_env == {kvcached.IPC_NAME: f"kvcached_{name}_<replica id>"}
        assert view.engine_args["enable_prefix_caching"] is False
        assert "gpu_memory_utilization" not in view.engine_args  # a logical cap under kvcached: vLLM's default


def test_kvcached_leaves_the_classifier_its_share(router_args):
    args = copy.deepcopy(router_args)
    args["classifier"]["num_gpus"] = 0
    env = plan(RouterConfig.model_validate(args), "gpu").llms["code"].env
    assert env["KVCACHED_GPU_UTILIZATION"] == "0.95"


def test_an_llm_may_turn_prefix_caching_back_on_and_cap_its_kv_cache(router_args):
    args = copy.deepcopy(router_args)
    args["llms"][0]["engine_args"]["enable_prefix_caching"] = True
    args["llms"][0]["kv_cache_gib"] = 6
    engine = plan(RouterConfig.model_validate(args), "gpu").llms["code"]
    assert engine.engine_args["enable_prefix_caching"] is True
    assert engine.engine_args["kv_cache_memory_bytes"] == 6 * GIB


def test_without_kvcached_each_engine_reserves_its_ray_share(router_args):
    args = copy.deepcopy(router_args)
    args["kvcached"]["enabled"] = False
    args["llms"][1]["engine_args"]["gpu_memory_utilization"] = 0.25
    p = plan(RouterConfig.model_validate(args), "gpu")
    code, math = p.llms["code"], p.llms["math"]
    assert code.engine_args["gpu_memory_utilization"] == 0.3
    assert math.engine_args["gpu_memory_utilization"] == 0.25  # set by the user: kept
    assert not any(k.startswith("KVCACHED") or k == "ENABLE_KVCACHED" for k in code.env)
    assert "enable_prefix_caching" not in code.engine_args


def test_cpu_fallback_ignores_kvcached_and_says_so(router_args, caplog):
    with caplog.at_level(logging.INFO, logger="serve_app.tools.placement"):
        p = plan(RouterConfig.model_validate(router_args), "cpu")
    assert "kvcached is GPU-only" in caplog.text
    for engine in p.llms.values():
        assert not kvcached.enabled(engine.env) and "KVCACHED_GPU_UTILIZATION" not in engine.env
        assert engine.engine_args == {"dtype": "float32", "max_model_len": 2048, "enable_auto_tool_choice": True,
                                      "tool_call_parser": "hermes", "chat_template": "chatml_tools"}
        assert engine.tools


def test_tool_calling_reaches_the_engine_where_configured(router_args):
    """GPU: each model's own tool_calling (general: hermes, its template renders tools; code and math: none)."""
    p = plan(RouterConfig.model_validate(router_args), "gpu")
    general = p.llms["general"]
    assert general.tools and general.engine_args["tool_call_parser"] == "hermes"
    assert general.engine_args["enable_auto_tool_choice"] is True and "chat_template" not in general.engine_args
    for name in ("code", "math"):
        assert not p.llms[name].tools
        assert not {"enable_auto_tool_choice", "tool_call_parser", "chat_template"} & p.llms[name].engine_args.keys()


def test_shipped_chat_template_is_found_by_name():
    from serve_app.llm.vllm_engine import chat_template_path

    path = chat_template_path("chatml_tools")
    assert path.endswith("chatml_tools.jinja") and "<tool_call>" in open(path).read()
    assert chat_template_path("/some/own/template.jinja") == "/some/own/template.jinja"


def test_an_external_llm_has_no_deployment(router_args):
    args = copy.deepcopy(router_args)
    args["llms"].append({"name": "hosted", "endpoint": "http://127.0.0.1:9100/v1/", "model": "gpt-4o-mini",
                         "api_key_env": "HOSTED_KEY"})
    for accelerator in ("cpu", "gpu"):
        p = plan(RouterConfig.model_validate(args), accelerator)
        hosted = p.llms["hosted"]
        assert hosted.external and hosted.deployment is None and hosted.tools
        assert hosted.endpoint == "http://127.0.0.1:9100/v1" and hosted.served_model == "gpt-4o-mini"
        assert not hosted.cpu_fallback and hosted.api_key_env == "HOSTED_KEY"
        assert "hosted" not in p.deployed_llms and set(p.deployed_llms) == {"code", "math", "general"}


def test_secrets_are_masked(serve_config):
    app = copy.deepcopy(serve_config["applications"][0])
    app["runtime_env"] = {"env_vars": {"HF_TOKEN": "hf_abc", "OPENAI_API_KEY": "sk", "DB_PASSWORD": "pw",
                                       "MY_SECRET": "s", "HF_HOME": "/cache"}}
    env = {v.name: v.env for v in describe(app, "gpu")}["llm-code"]
    assert {k: env[k] for k in ("HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "MY_SECRET")} == dict.fromkeys(
        ("HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "MY_SECRET"), "****")
    assert env["HF_HOME"] == "/cache"


def test_placement_cli_prints_every_deployment(capsys):
    from tests.conftest import SERVE_CONFIG

    assert main([str(SERVE_CONFIG), "--accelerator", "gpu"]) == 0
    out = capsys.readouterr().out
    for name in ("Ingress", "Classifier", "StatsAggregator", *LLMS):
        assert f"\n{name}\n" in out
    assert "GPU fraction  0.3" in out and "autoscaling 1..2" in out and "downscale after 900s" in out
    assert "KVCACHED_IPC_NAME=kvcached_llm-code_<replica id>  (set in each replica)" in out
    assert "GPUs in use: 1 at the fewest replicas, 1.9 at the most" in out
    assert main([str(SERVE_CONFIG), "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "KVCACHED" not in out and "VLLM_CPU_KVCACHE_SPACE=1" in out
