"""What reaches Ray for each accelerator: resources, engine models and environment."""

from __future__ import annotations

from serve_app.config import RouterConfig
from serve_app.placement import CLASSIFIER, plan, resolve_accelerator


def test_auto_picks_gpu_only_when_the_cluster_has_one():
    assert resolve_accelerator("auto", 0) == "cpu"
    assert resolve_accelerator("auto", 4) == "gpu"
    assert resolve_accelerator("gpu", 0) == "gpu"
    assert resolve_accelerator("cpu", 8) == "cpu"


def test_gpu_plan_uses_configured_models_and_fractions(router_args):
    p = plan(RouterConfig.model_validate(router_args), "gpu")
    code = p.deployments["llm-code"]
    assert code.ray_actor_options == {"num_cpus": 2, "num_gpus": 0.3}
    assert code.engine.model == "deepseek-ai/deepseek-coder-1.3b-instruct"
    assert code.engine.engine_args == {"max_model_len": 4096}
    assert p.deployments[CLASSIFIER].ray_actor_options["num_gpus"] == 0.1
    gpus = sum(d.ray_actor_options.get("num_gpus", 0) for d in p.deployments.values())
    assert gpus <= 1.0  # the whole graph shares one GPU
    assert not any(t.fallback for t in p.targets)


def test_cpu_plan_falls_back_to_the_embedded_model(router_args):
    p = plan(RouterConfig.model_validate(router_args), "cpu")
    for name in ("llm-code", "llm-math", "llm-general"):
        d = p.deployments[name]
        assert "num_gpus" not in d.ray_actor_options
        assert d.engine.model == "embedded:SmolLM2-135M-Instruct"
        assert d.engine.served_model_name == "SmolLM2-135M-Instruct"
        assert d.engine.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        assert d.engine.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert all(t.fallback and t.served_model == "SmolLM2-135M-Instruct" for t in p.targets)
    assert sum(d.ray_actor_options["num_cpus"] for d in p.deployments.values()) <= 2  # fits a 2-core box
