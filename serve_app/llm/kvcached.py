"""kvcached for the LLM engines: their environment, a KV-cache name per replica, and a start-up check.

kvcached (GPU only) makes vLLM's KV cache elastic: pages of GPU memory are mapped as requests need them and
returned when they finish, so several engines share one GPU first come, first served. It is switched on per
process by environment variables that must be set before vLLM is imported; the ``kvcached_autopatch.pth``
start-up hook it installs then patches vLLM as it loads, in the replica and in the engine-core process vLLM
spawns from it (which inherits the environment).

Pure except ``probe_runtime``, the one function that looks at the machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import site
from dataclasses import dataclass
from pathlib import Path

ENABLE = "ENABLE_KVCACHED"
AUTOPATCH = "KVCACHED_AUTOPATCH"
IPC_NAME = "KVCACHED_IPC_NAME"
GPU_UTILIZATION = "KVCACHED_GPU_UTILIZATION"
CONTIGUOUS_LAYOUT = "KVCACHED_CONTIGUOUS_LAYOUT"
# Set from the config's own fields or per replica: nothing else may set them.
OWNED_ENV = frozenset({ENABLE, AUTOPATCH, IPC_NAME, GPU_UTILIZATION, CONTIGUOUS_LAYOUT})

VERSION = "0.1.6"
# A source distribution whose build imports the installed torch: it cannot use an isolated build environment.
INSTALL = f"pip install kvcached=={VERSION} --no-build-isolation"
AUTOPATCH_HOOK = "kvcached_autopatch.pth"

# kvcached keeps the first 64 characters of a name (kvcached.utils._sanitize_segment); past that, two replicas
# could share a segment, and one exiting would crash the other.
_IPC_MAX = 64
_IPC_PREFIX = "kvcached_"


def engine_env(utilization: float, contiguous_layout: bool, classifier_gpus: float,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every kvcached engine of the application; the IPC name is added per replica."""
    return {
        **(extra or {}),
        ENABLE: "true",
        AUTOPATCH: "1",
        GPU_UTILIZATION: f"{gpu_utilization(utilization, classifier_gpus):g}",
        CONTIGUOUS_LAYOUT: "true" if contiguous_layout else "false",
    }


def gpu_utilization(configured: float, classifier_gpus: float) -> float:
    """kvcached keeps (1 - this) of the GPU free; a classifier sharing the GPU needs its share kept free."""
    if not 0 < classifier_gpus < 1:  # no GPU, or a whole one of its own
        return configured
    return round(min(configured, 1 - classifier_gpus), 4)


def enabled(env: dict[str, str]) -> bool:
    return env.get(ENABLE, "").lower() in ("true", "1")


def ipc_name(deployment: str, replica_id: str) -> str:
    """``kvcached_<deployment>_<replica id>``: unique per replica, and says whose KV cache a segment holds."""
    deployment, replica_id = _safe(deployment), _safe(replica_id)
    room = _IPC_MAX - len(_IPC_PREFIX) - len(replica_id) - 1
    if len(deployment) > room:  # keep the replica id whole; a hash keeps long deployment names apart
        digest = hashlib.sha1(deployment.encode()).hexdigest()[:6]
        deployment = f"{deployment[:room - len(digest) - 1]}-{digest}"
    return f"{_IPC_PREFIX}{deployment}_{replica_id}"


def replica_env(spec_env: dict[str, str], deployment: str, replica_id: str) -> dict[str, str]:
    """The engine environment of one replica: the application's, plus its own KV-cache name under kvcached.

    Serve gives every replica of a deployment the same environment, and kvcached's default name (from the
    process group) collides in containers, so the name is made here, inside the replica, before vLLM loads.
    """
    if not enabled(spec_env):
        return dict(spec_env)
    return {**spec_env, IPC_NAME: ipc_name(deployment, replica_id)}


def _safe(segment: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", segment)


@dataclass(frozen=True)
class RuntimeProbe:
    """What kvcached needs from the machine a replica landed on."""

    kvcached_installed: bool
    autopatch_hook: bool  # kvcached_autopatch.pth in site-packages: patches vLLM in the engine-core process too
    gpu_available: bool


class KvcachedUnavailableError(RuntimeError):
    """kvcached is on in the config, but this replica cannot run it; the message says what to do."""


def probe_runtime() -> RuntimeProbe:
    """The seam: look at this machine. Everything that decides from the answer is pure and unit-tested."""
    import torch

    installed = importlib.util.find_spec("kvcached") is not None  # does not import it (that reads the env)
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    hook = any((Path(d) / AUTOPATCH_HOOK).exists() for d in site_dirs)
    return RuntimeProbe(installed, hook, torch.cuda.is_available())


def runtime_problem(probe: RuntimeProbe) -> str | None:
    """Why kvcached cannot run here, with what to install or turn off; None when it can."""
    off = "or set kvcached.enabled: false in serve_config.yaml to run plain vLLM"
    if not probe.gpu_available:
        return (f"kvcached is enabled but this replica sees no GPU (torch.cuda.is_available() is False). kvcached "
                f"needs an NVIDIA GPU and a CUDA build of torch: install the project with its gpu extra on GPU "
                f"nodes, {off}, or use accelerator: cpu (the CPU fallback ignores kvcached).")
    if not probe.kvcached_installed:
        return (f"kvcached is enabled but not installed in this replica's environment. After vLLM and torch, run "
                f"`{INSTALL}` on every GPU node (see docs/gpu.md), {off}.")
    if not probe.autopatch_hook:
        return (f"kvcached is importable but its start-up hook {AUTOPATCH_HOOK} is not in site-packages (editable "
                f"installs leave it out), so vLLM would start without it. Reinstall with `{INSTALL}`, {off}.")
    return None


def require_runtime(probe: RuntimeProbe) -> None:
    problem = runtime_problem(probe)
    if problem:
        raise KvcachedUnavailableError(problem)
