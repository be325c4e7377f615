"""kvcached: per-replica KV-cache names and the start-up check, without a GPU."""

from __future__ import annotations

import re

import pytest
from ray.serve._private.utils import get_random_string

from serve_app.config.graph import plan
from serve_app.config.schema import RouterConfig
from serve_app.llm import kvcached
from serve_app.llm.kvcached import KvcachedUnavailableError, RuntimeProbe

READY = RuntimeProbe(kvcached_installed=True, autopatch_hook=True, gpu_available=True)


def test_ipc_names_are_unique_across_replicas_and_deployments(router_args):
    p = plan(RouterConfig.model_validate(router_args), "gpu")
    engines = {llm.deployment: llm for llm in p.llms.values()}
    assert set(engines) == {"llm-code", "llm-math", "llm-general"}
    names = set()
    for deployment, engine in engines.items():
        for _ in range(50):  # replica ids made the way Serve makes them
            env = kvcached.replica_env(engine.env, deployment, get_random_string())
            name = env[kvcached.IPC_NAME]
            assert name.startswith(f"kvcached_{deployment}_")
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)  # kvcached keeps 64 safe characters
            names.add(name)
    assert len(names) == 3 * 50


def test_replica_env_adds_a_name_only_under_kvcached_and_copies():
    spec_env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert kvcached.replica_env(spec_env, "llm-code", "abc12345") == spec_env
    on = {**spec_env, kvcached.ENABLE: "true"}
    env = kvcached.replica_env(on, "llm-code", "abc12345")
    assert env[kvcached.IPC_NAME] == "kvcached_llm-code_abc12345"
    assert kvcached.IPC_NAME not in on  # the shared spec is never changed


def test_long_deployment_names_stay_distinct_and_keep_the_replica_id():
    long_a, long_b = "llm-" + "a" * 59 + "x", "llm-" + "a" * 59 + "y"
    a, b = kvcached.ipc_name(long_a, "r1r2r3r4"), kvcached.ipc_name(long_b, "r1r2r3r4")
    assert a != b and len(a) <= 64 and len(b) <= 64
    assert a.endswith("_r1r2r3r4") and b.endswith("_r1r2r3r4")
    assert kvcached.ipc_name("llm-code", "id/with:odd chars") == "kvcached_llm-code_id-with-odd-chars"


@pytest.mark.parametrize("classifier_gpus, expected", [(0, 0.95), (0.1, 0.9), (0.2, 0.8), (1, 0.95)])
def test_gpu_utilization_leaves_the_classifier_its_share(classifier_gpus, expected):
    assert kvcached.gpu_utilization(0.95, classifier_gpus) == expected
    assert kvcached.gpu_utilization(0.7, classifier_gpus) == min(0.7, expected)


@pytest.mark.parametrize("probe, words", [
    (RuntimeProbe(True, True, False), ["no GPU", "gpu extra", "enabled: false", "accelerator: cpu"]),
    (RuntimeProbe(False, False, True), ["not installed", kvcached.INSTALL, "enabled: false"]),
    (RuntimeProbe(True, False, True), [kvcached.AUTOPATCH_HOOK, kvcached.INSTALL, "enabled: false"]),
])
def test_startup_check_says_what_to_install_or_turn_off(probe, words):
    with pytest.raises(KvcachedUnavailableError) as info:
        kvcached.require_runtime(probe)
    for word in words:
        assert word in str(info.value)


def test_startup_check_passes_when_everything_is_there():
    assert kvcached.runtime_problem(READY) is None
    kvcached.require_runtime(READY)


def test_the_probe_reads_this_machine():
    # The one seam, run for real: on a box without a GPU or kvcached a replica would refuse to start.
    probe = kvcached.probe_runtime()
    problem = kvcached.runtime_problem(probe)
    assert (problem is None) == (probe.gpu_available and probe.kvcached_installed and probe.autopatch_hook)
    if not probe.gpu_available:
        assert "no GPU" in problem
