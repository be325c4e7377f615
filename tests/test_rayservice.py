"""k8s/rayservice.yaml deploys exactly serve_config.yaml's applications, on autoscaled GPU pods."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import ray
import yaml

from serve_app.tools.config_check import check
from tests.conftest import ROOT, SERVE_CONFIG

RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"


def _make_rayservice():
    spec = importlib.util.spec_from_file_location("make_rayservice", ROOT / "scripts" / "make_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def test_file_is_up_to_date_with_serve_config():
    # Fails after serve_config.yaml changes until `python scripts/make_rayservice.py` is re-run.
    text = RAYSERVICE.read_text()
    assert _make_rayservice().render(text, SERVE_CONFIG.read_text()) == text


def test_serve_config_v2_is_serve_config_applications_on_gpus(rayservice, serve_config):
    v2 = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert check(v2) == []  # nothing Ray would silently drop, args valid
    expected = copy.deepcopy(serve_config["applications"])
    expected[0]["args"]["accelerator"] = "gpu"  # the one change: GPU pods may join after the app is built
    assert v2["applications"] == expected


def test_gpu_worker_group_and_autoscaling(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert cluster["headGroupSpec"]["rayStartParams"]["metrics-export-port"] == "8080"
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_render_rejects_a_config_it_cannot_place():
    make = _make_rayservice()
    with pytest.raises(ValueError, match="serveConfigV2"):
        make.render("apiVersion: ray.io/v1\nkind: RayService\n", SERVE_CONFIG.read_text())
    with pytest.raises(ValueError, match="accelerator: auto"):
        make.serve_config_v2("applications:\n  - name: x\n    args:\n      accelerator: gpu\n")
