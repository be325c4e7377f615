"""The encoder backends on the real embedding model: each routes the dev set as torch does, exports once,
reads texts as sentence-transformers does, and says what it chose and why."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from serve_app.config.schema import DEFAULT_MAX_SEQ_LENGTH
from serve_app.embedded import cache_dir
from serve_app.routing.cpu_features import BF16_FLAGS, INT8_FLAGS, CPUInfo, cpu_info
from serve_app.routing.encoder import (
    ClassifierLoadError,
    Encoder,
    choose_backend,
    embed_queries,
    installed,
    load_encoder,
)
from serve_app.tools import eval as eval_cli
from serve_app.tools.accuracy import classification_scores
from serve_app.tools.eval import InProcessRouter
from serve_app.tools.labelled import load_labelled
from tests.conftest import DEV_SET, SERVE_CONFIG

MODEL = "fitted:all-MiniLM-L6-v2"  # the shipped classifier model: the embedded one fitted to the routes
# The task's bound: every backend within this macro-F1 of torch fp32 on the development set.
MAX_F1_LOSS = 0.005
# Each CPU backend as this CPU runs it, and as a CPU without int8/bf16 units runs it.
VARIANTS = {
    "onnx": ("onnx", frozenset()),
    "onnx-fp32": ("onnx", INT8_FLAGS),
    "openvino": ("openvino", frozenset()),
    "openvino-f32": ("openvino", BF16_FLAGS | {"amx_bf16"}),
}


def load_variant(variant: str, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH) -> Encoder:
    backend, lacking = VARIANTS[variant]
    return load_encoder(MODEL, backend, max_seq_length, cpu=cpu_info().without(lacking))


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory):
    """Exports go to a fresh cache, made once for the module: the export itself is under test."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("encoder-cache")
        (path / "fitted").symlink_to(cache_dir() / "fitted")  # the fitted model is an input here, not under test
        mp.setenv("SEMANTIC_ROUTER_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    return {variant: load_variant(variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def dev_items(app_config):
    return load_labelled(DEV_SET, app_config.routing.context_turns)


def dev_macro_f1(app_config, encoder: Encoder, items) -> float:
    """The dev set routed with ``encoder``: every item's texts embedded in one call, then the ingress's Decider."""
    decider = InProcessRouter.from_config(app_config, encoder).decider
    threads = [decider.read(item.texts) for item in items]
    predicted = [decider.decide(thread, vectors).route
                 for thread, vectors in zip(threads, embed_queries(encoder, [t.embedded for t in threads]))]
    routes = [r.name for r in app_config.routing.routes]
    return classification_scores([i.label for i in items], predicted, routes).macro_f1


@pytest.fixture(scope="module")
def torch_f1(app_config, dev_items) -> float:
    return dev_macro_f1(app_config, load_encoder(MODEL, "torch"), dev_items)


@pytest.fixture(scope="module")
def queries(dev_items) -> list[str]:
    """About 50 dev-set texts of every length, a few longer than max_seq_length."""
    return [item.texts[0] for item in dev_items[::15]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_backend_routes_the_dev_set_as_torch_does(variant, encoders, app_config, dev_items, torch_f1):
    f1 = dev_macro_f1(app_config, encoders[variant], dev_items)
    assert f1 >= torch_f1 - MAX_F1_LOSS, f"{encoders[variant].describe()}: macro-F1 {f1:.4f}, torch {torch_f1:.4f}"


def test_reading_128_tokens_routes_as_reading_256(app_config, dev_items, torch_f1):
    # The default max_seq_length (torch_f1's): the start of a long prompt decides its route.
    assert DEFAULT_MAX_SEQ_LENGTH == 128
    f1_256 = dev_macro_f1(app_config, load_encoder(MODEL, "torch", max_seq_length=256), dev_items)
    assert abs(torch_f1 - f1_256) <= MAX_F1_LOSS


def test_precision_follows_the_cpu(encoders):
    cpu = cpu_info()
    assert encoders["onnx"].name == ("onnx-int8" if cpu.int8 else "onnx-fp32")
    assert encoders["onnx-fp32"].name == "onnx-fp32"
    assert encoders["openvino"].name == ("openvino-bf16" if cpu.bf16 else "openvino-f32")
    assert encoders["openvino-f32"].name == "openvino-f32"


@pytest.mark.parametrize("variant", VARIANTS)
def test_embeddings_are_unit_rows_close_to_torch(variant, encoders, queries):
    reference = load_encoder(MODEL, "torch").encode(queries)
    out = encoders[variant].encode(queries)
    assert out.dtype == np.float32 and out.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    cosine = (out * reference).sum(axis=1)
    assert cosine.min() >= 0.98, f"{encoders[variant].describe()}: lowest cosine {cosine.min():.4f}"
    assert encoders[variant].encode([]).shape == (0, reference.shape[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_and_order_do_not_change_embeddings(variant, encoders, queries):
    encoder = encoders[variant]
    batched = encoder.encode(queries[:40][::-1])[::-1]
    single = np.stack([encoder.encode([q])[0] for q in queries[:40]])
    assert (batched * single).sum(axis=1).min() > 0.9999


def test_tokenizer_reads_texts_as_sentence_transformers(queries):
    """Same ids, mask and truncation: the graph backends see exactly what torch sees."""
    graph = load_variant("onnx", max_seq_length=64)
    theirs = load_encoder(MODEL, "torch", max_seq_length=64).model.preprocess(queries)
    ours = graph.features(queries)
    assert ours.keys() <= theirs.keys()
    for name, array in ours.items():
        np.testing.assert_array_equal(array, theirs[name].numpy(), err_msg=name)
    assert ours["input_ids"].shape[1] == 64  # some queries are longer: truncated like torch


def test_auto_logs_its_choice_and_why(caplog):
    cpu = cpu_info()
    with caplog.at_level(logging.INFO, logger="serve_app.routing.encoder"):
        encoder = load_encoder(MODEL, "auto")
    lines = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    chosen, why = choose_backend(cpu, {b for b in ("onnx", "openvino") if installed(b)})
    assert len(lines) == 1 and why in lines[0] and cpu.isa in lines[0]
    assert encoder.name.startswith(chosen) and encoder.choice in lines[0]


def test_a_cuda_device_means_torch(caplog):
    with caplog.at_level(logging.INFO, logger="serve_app.routing.encoder"):
        try:
            load_encoder(MODEL, "auto", device="cuda")  # loads on a GPU machine; on a CPU one it fails after choosing
        except ClassifierLoadError:
            pass
    assert "auto -> torch" in caplog.text
    with pytest.raises(ClassifierLoadError, match="runs on the CPU"):
        load_encoder(MODEL, "onnx", device="cuda")


def _cpu(*flags: str) -> CPUInfo:
    return CPUInfo("test", frozenset(flags))


@pytest.mark.parametrize("cpu, available, chosen", [
    (_cpu("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"), {"onnx", "openvino"},
     "openvino"),
    (_cpu("avx512f", "avx512_bf16", "amx_bf16"), {"onnx"}, "onnx"),
    (_cpu("avx512f", "avx512_bf16", "avx512_vnni"), {"onnx", "openvino"}, "onnx"),  # this CPU (AMD EPYC)
    (_cpu("avx2", "avx_vnni"), {"onnx", "openvino"}, "onnx"),
    (_cpu("avx512f", "avx512_vnni"), {"openvino"}, "openvino"),
    (_cpu("avx512f", "avx512_bf16"), {"onnx", "openvino"}, "openvino"),
    (_cpu("avx2"), {"onnx", "openvino"}, "onnx"),
    (_cpu(), {"onnx"}, "onnx"),
    (_cpu("avx512f", "avx512_vnni"), set(), "torch"),
])
def test_choice_by_instruction_set(cpu, available, chosen):
    backend, why = choose_backend(cpu, available)
    assert backend == chosen
    preferred = choose_backend(cpu, {"onnx", "openvino"})[0]
    assert ("not installed" in why) == (chosen != preferred)
    if chosen != preferred:
        assert "pip install" in why


def test_export_is_made_once_and_reused(export_cache, encoders, caplog):
    models = sorted(export_cache.glob("encoders/*/*/model.onnx"))
    assert {m.parent.name for m in models} >= {"onnx-fp32", "onnx-fp32-fused"}
    mtimes = [m.stat().st_mtime_ns for m in models]
    with caplog.at_level(logging.INFO, logger="serve_app.routing.encoder"):
        for variant in VARIANTS:
            load_variant(variant)
    assert "Exporting" not in caplog.text
    assert [m.stat().st_mtime_ns for m in models] == mtimes
    assert not list(export_cache.glob("encoders/*/*.partial"))


def test_replicas_starting_together_export_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SEMANTIC_ROUTER_CACHE", str(tmp_path))
    names = []

    def start() -> None:  # a thread that fails adds no name
        names.append(load_encoder("embedded:all-MiniLM-L6-v2", "onnx").name)  # this fresh cache has no fitted model

    with caplog.at_level(logging.INFO, logger="serve_app.routing.encoder"):
        threads = [threading.Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(names) == 3 and len(set(names)) == 1
    exports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Exporting")]
    assert len(exports) == len(set(exports)) == (3 if cpu_info().int8 else 2)  # each variant once, by one thread


def test_unknown_backend_missing_model_and_too_long_are_clear(tmp_path):
    with pytest.raises(ClassifierLoadError, match="Unknown classifier backend"):
        load_encoder(MODEL, "tensorrt")  # type: ignore[arg-type]
    for backend in ("torch", "onnx"):
        with pytest.raises(ClassifierLoadError, match="from local files"):
            load_encoder(str(tmp_path / "no-such-model"), backend)
    with pytest.raises(ClassifierLoadError, match="more than .* reads"):
        load_variant("onnx", max_seq_length=4096)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_eval_takes_a_backend(backend, capsys, torch_f1):
    argv = ["--data", str(DEV_SET), "--config", str(SERVE_CONFIG), "--json", "--backend", backend]
    assert eval_cli.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["encoder"].startswith(backend) and f"encoder {result['encoder']}" in out[0]
    assert result["macro_f1"] >= torch_f1 - MAX_F1_LOSS


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_threads_run_queries_side_by_side_with_the_same_numbers(backend, encoders, dev_items):
    """threads N: N calls embed at once, each on one thread, and give the library default's vectors exactly."""
    queries = [item.texts[0] for item in dev_items[:24]]
    reference = np.concatenate([encoders[backend].encode([q]) for q in queries])  # threads 0, one at a time
    encoder = load_encoder(MODEL, backend, threads=2)
    assert (encoders[backend].parallel, encoder.parallel) == (1, 2)
    assert "2 threads of one query each" in encoder.describe()
    found: dict[int, np.ndarray] = {}

    def work(start: int) -> None:
        for i in range(start, len(queries), 2):
            found[i] = encoder.encode([queries[i]])[0]

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert np.array_equal(np.stack([found[i] for i in range(len(queries))]), reference)
    with pytest.raises(ClassifierLoadError, match="threads must be 0"):
        load_encoder(MODEL, backend, threads=-1)
