"""cluster.yaml, checked offline the way `ray up` checks it, and against what the GPU plan asks for."""

from __future__ import annotations

import copy

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from serve_app.tools.placement import describe
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _gpu_types(config: dict) -> dict[str, dict]:
    return {k: t for k, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


def test_ray_accepts_it(cluster):
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_node_resources_are_integers(cluster):
    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(ValidationError):
        validate_config(prepare_config(bad))


def test_head_has_no_gpu_and_exports_metrics_and_dashboard(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--metrics-export-port=8080" in start and "--dashboard-host=0.0.0.0" in start
    assert "--metrics-export-port=8080" in " ".join(cluster["worker_start_ray_commands"])


def test_gpu_nodes_install_the_gpu_extra_then_kvcached(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    commands = prepared["worker_setup_commands"]
    venv = next(i for i, c in enumerate(commands) if "python3 -m venv" in c)
    extra = next(i for i, c in enumerate(commands) if "[gpu]" in c)
    kvc = next(i for i, c in enumerate(commands) if "kvcached==0.1.6 --no-build-isolation" in c)
    assert venv < extra < kvc  # kvcached compiles against the torch the gpu extra installed
    assert not any("kvcached" in c or "[gpu]" in c for c in prepared["head_setup_commands"])


def test_one_gpu_node_holds_the_graph_and_max_workers_hold_its_peak(cluster, serve_config):
    views = [v for v in describe(serve_config["applications"][0], "gpu") if v.ray_actor_options.get("num_gpus")]
    (node,) = _gpu_types(cluster).values()
    # Fewest replicas: everything that needs a GPU fits one GPU node, CPUs included.
    assert sum(v.ray_actor_options["num_gpus"] * v.replicas[0] for v in views) <= node["resources"]["GPU"]
    assert sum(v.ray_actor_options["num_cpus"] * v.replicas[0] for v in views) <= node["resources"]["CPU"]
    # Most replicas: the autoscaler may add enough GPU nodes.
    peak_gpus = sum(v.ray_actor_options["num_gpus"] * v.replicas[1] for v in views)
    assert peak_gpus <= node["max_workers"] * node["resources"]["GPU"]
    assert node["min_workers"] >= 1  # a GPU is there when accelerator: auto looks at deploy time


def test_the_local_cluster_mirrors_its_node_types_on_loopback(cluster):
    from harness.local_cluster import HEAD_TYPE, autoscaling_config, stand_in_resource

    stand_in = stand_in_resource(ROOT / "serve_config.yaml")
    local = autoscaling_config(cluster, stand_in, idle_timeout_minutes=0.5)
    validate_config(local)  # against the schema the autoscaler reads it with
    types = local["available_node_types"]
    assert set(types) == {HEAD_TYPE} | set(cluster["available_node_types"]) - {cluster["head_node_type"]}
    assert types[HEAD_TYPE]["resources"] == {"CPU": 8}  # the head's CPUs; no GPU, no stand-in
    for name, declared in _gpu_types(cluster).items():
        mirrored = types[name]
        assert mirrored["resources"][stand_in] == declared["resources"]["GPU"] and "GPU" not in mirrored["resources"]
        assert (mirrored["min_workers"], mirrored["max_workers"]) == (declared["min_workers"], declared["max_workers"])
    assert local["max_workers"] == cluster["max_workers"] and local["idle_timeout_minutes"] == 0.5
    assert local["provider"]["gcs_address"].startswith("127.0.0.1:")
