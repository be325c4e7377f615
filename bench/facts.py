"""What every benchmark records beside its numbers: the machine it ran on and the versions that ran.

Imported by the benchmark scripts as a sibling module (bench/ is on the path when a script runs as documented).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: serve_app
from serve_app.routing.cpu_features import cpu_info  # noqa: E402


def machine() -> dict:
    return {"cpu": cpu_info().model, "cores": psutil.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30),
            "load_average_at_start": [round(x, 2) for x in psutil.getloadavg()]}


def version_of(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed (a package may go by two names)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each of ``packages`` that is installed."""
    return {p: v for p in packages if (v := version_of(p)) is not None}
