"""What this machine can run fast: the CPU's matrix instructions and whether a CUDA device is present.

The classifier's ``backend: auto`` decides from these (serve_app/routing/encoder.py), and says which it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The flags that change which encoder backend is fastest, by the level they name (best first).
_LEVELS = (("amx", "amx_bf16"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
           ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"))
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # int8 dot products in hardware
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # bf16 dot products in hardware


@dataclass(frozen=True)
class CPUInfo:
    model: str
    flags: frozenset[str]

    @property
    def isa(self) -> str:
        """The best level present: amx, avx512_vnni, avx_vnni, avx512_bf16, avx512, avx2 or baseline."""
        return next((level for level, flag in _LEVELS if flag in self.flags), "baseline")

    @property
    def int8(self) -> bool:
        return bool(INT8_FLAGS & self.flags)

    @property
    def bf16(self) -> bool:
        return bool(BF16_FLAGS & self.flags)

    def without(self, flags: frozenset[str]) -> CPUInfo:
        """The same CPU as if it lacked ``flags``: what the benchmark and tests use to run a backend as it
        runs on an older CPU."""
        return CPUInfo(self.model, self.flags - flags)


def cpu_info(path: str = "/proc/cpuinfo") -> CPUInfo:
    model, flags = "unknown", frozenset()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
                break
    except OSError:  # not Linux: no flags, so auto keeps to what needs none
        pass
    return CPUInfo(model, flags)


def cuda_available() -> bool:
    # Without NVIDIA's driver there is no CUDA device: skip importing torch, which the CPU backends never need.
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
        return False
    import torch

    return torch.cuda.is_available()
