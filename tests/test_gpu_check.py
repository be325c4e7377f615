"""scripts/gpu_check.py's readers of nvidia-smi, process titles and kvcached segments (the script itself needs GPUs)."""

from __future__ import annotations

import importlib.util
import os
import struct

import pytest

from serve_app.llm import kvcached
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nvidia_smi_csv(gpu_check):
    out = "0, GPU-1a2b, NVIDIA A10G, 20511, 23028\nGPU-1a2b, 4242, [N/A]\n\n"
    assert gpu_check.parse_csv(out) == [["0", "GPU-1a2b", "NVIDIA A10G", "20511", "23028"],
                                        ["GPU-1a2b", "4242", "[N/A]"]]


@pytest.mark.parametrize("title, deployment", [
    ("ray::ServeReplica:router:llm-code", "llm-code"),
    ("ray::ServeReplica:router:llm-general.handle_request_streaming", "llm-general"),
    ("ray::ServeReplica:router:Classifier ", "Classifier"),
    ("python -c from multiprocessing.spawn import spawn_main", None),
])
def test_replica_titles_name_their_deployment(gpu_check, title, deployment):
    assert gpu_check.deployment_of(title) == deployment


def test_this_process_belongs_to_no_replica(gpu_check):
    assert gpu_check.owner(os.getpid()) is None


def test_kvcached_segments_read_as_limit_and_used(gpu_check):
    assert gpu_check.parse_segment(struct.pack("=3q", 6 << 30, 1 << 30, 64 << 20)) == (6 << 30, 1 << 30)
    assert gpu_check.parse_segment(b"not a segment") is None
    # The script finds segments by the names replicas give them.
    assert kvcached.ipc_name("llm-code", "abc12345").startswith(gpu_check.KVCACHED_PREFIX)
