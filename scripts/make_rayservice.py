"""Copy serve_config.yaml's applications into k8s/rayservice.yaml (spec.serveConfigV2), keeping the rest.

    python scripts/make_rayservice.py           # rewrite k8s/rayservice.yaml after editing serve_config.yaml
    python scripts/make_rayservice.py --check   # exit 1 when it is out of date (tests/test_rayservice.py)

One change on the way: ``accelerator: gpu``. A RayService's GPU worker pods may join after the application is
built, and ``auto`` would then pick the CPU fallback, which the GPU image cannot run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"

HEADER = """\
# Generated from serve_config.yaml by scripts/make_rayservice.py: edit that file, then re-run the script.
# Every pod runs a Serve proxy; the RayService's serve Service sends traffic to the healthy ones.
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: 8000
"""
_ACCELERATOR = re.compile(r"^(\s+accelerator:\s*)auto\b.*$", re.MULTILINE)
_BLOCK = re.compile(r"^(?P<indent>[ ]*)serveConfigV2: \|\n(?P<body>(?:(?P=indent)[ ]+.*\n|[ ]*\n)*)", re.MULTILINE)


def serve_config_v2(serve_config_text: str) -> str:
    """The Serve config the RayService deploys: serve_config.yaml's applications, on GPUs."""
    start = re.search(r"^applications:", serve_config_text, re.MULTILINE)
    if start is None:
        raise ValueError("serve_config.yaml has no top-level 'applications:'")
    applications, count = _ACCELERATOR.subn(r"\1gpu   # GPU pods may join after the app is built",
                                            serve_config_text[start.start():])
    if count != 1:
        raise ValueError(f"expected one 'accelerator: auto' in serve_config.yaml, found {count}")
    return HEADER + applications


def render(rayservice_text: str, serve_config_text: str) -> str:
    """``rayservice_text`` with its serveConfigV2 block replaced by the current serve config."""
    match = _BLOCK.search(rayservice_text)
    if match is None:
        raise ValueError("k8s/rayservice.yaml has no 'serveConfigV2: |' block")
    indent = match["indent"] + "  "
    body = "".join(f"{indent}{line}\n" if line.strip() else "\n"
                   for line in serve_config_v2(serve_config_text).splitlines()) + "\n"
    return rayservice_text[:match.start("body")] + body + rayservice_text[match.end("body"):]


def main(argv: list[str]) -> int:
    current = RAYSERVICE.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if "--check" in argv:
        if current != wanted:
            print(f"{RAYSERVICE.relative_to(ROOT)} is out of date: run python scripts/make_rayservice.py",
                  file=sys.stderr)
            return 1
        print(f"{RAYSERVICE.relative_to(ROOT)} is up to date")
        return 0
    RAYSERVICE.write_text(wanted)
    print(f"wrote {RAYSERVICE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
