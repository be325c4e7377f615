"""Fit the embedding model to the routes: contrastive fine-tuning on the routes' own examples, in the style of SetFit.

    python -m serve_app.tools.fit [--config serve_config.yaml] [--out FOLDER] [--data data/dev.jsonl]
                                  [--epochs 1] [--pairs 8] [--seed 0]

Pairs of examples of one route are pulled together, pairs from two routes pushed apart (sentence-transformers'
training API, ``CosineSimilarityLoss``), so the nearest examples of a request are more often its own route's.
The routing block's follow-up examples (``thread.follow_up``) are a class of their own: a turn that only
makes sense with the thread then looks like one. ``--data`` adds labelled single-turn items, only from their
``tune`` part: the held-out part is never trained on. CPU, offline, minutes.

The result is a sentence-transformers folder, run through the same ONNX/OpenVINO export as any model. With
``classifier.model: fitted:all-MiniLM-L6-v2`` (the shipped config) it goes to the cache folder that name
resolves to, fitted from the embedded all-MiniLM-L6-v2, and is rebuilt only when what it is fitted on changed:
``scripts/setup.sh`` runs it, and so must a cluster's image build. ``--out`` writes anywhere else, and
``python -m serve_app.tools.eval --model FOLDER`` compares it with the config's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from serve_app.api.errors import describe_error
from serve_app.config.file import load_app_config
from serve_app.config.schema import AppConfig
from serve_app.embedded import FITTED_PREFIX, fitted_base, fitted_dir, resolve_encoder
from serve_app.routing.decider import FOLLOW_UP  # the follow-ups' class: the name the index gives them
from serve_app.tools.labelled import load_labelled


def labelled_examples(config: AppConfig, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(text, class) to train on: every route's examples, the follow-up examples, then ``extra``."""
    examples = [(text, route.name) for route in config.routing.routes for text in route.examples]
    examples += [(text, FOLLOW_UP) for text in config.routing.thread.follow_up]
    return [*examples, *extra]


def contrastive_pairs(examples: Sequence[tuple[str, str]], pairs: int, seed: int) -> list[tuple[str, str, float]]:
    """For each example, ``pairs`` partners of its own class (1.0) and as many of other classes (0.0)."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    for text, label in examples:
        by_class[label].append(text)
    out = []
    for text, label in examples:
        own = [t for t in by_class[label] if t != text]
        other = [t for c, ts in by_class.items() if c != label for t in ts]
        out += [(text, rng.choice(own), 1.0) for _ in range(pairs) if own]
        out += [(text, rng.choice(other), 0.0) for _ in range(pairs) if other]
    rng.shuffle(out)
    return out


def fit(config: AppConfig, out: Path, base: str, extra: Sequence[tuple[str, str]] = (), epochs: int = 1,
        pairs: int = 8, seed: int = 0, batch_size: int = 32) -> dict:
    """Fine-tune ``base`` on the config's routes into ``out`` (replaced whole), unless it is already that fit."""
    examples = labelled_examples(config, extra)
    recipe = {"base_model": base, "examples": examples, "epochs": epochs, "pairs": pairs, "seed": seed,
              "batch_size": batch_size, "max_seq_length": config.router.classifier.max_seq_length}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    if (out / "fit.json").exists() and json.loads((out / "fit.json").read_text()).get("digest") == digest:
        return {**json.loads((out / "fit.json").read_text()), "up_to_date": True}

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    train = contrastive_pairs(examples, pairs, seed)
    model = SentenceTransformer(resolve_encoder(base), device="cpu")
    model.max_seq_length = config.router.classifier.max_seq_length
    dataset = Dataset.from_dict({"sentence1": [a for a, _, _ in train], "sentence2": [b for _, b, _ in train],
                                 "score": [s for _, _, s in train]})
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=2e-5, warmup_steps=0.1, seed=seed, save_strategy="no", report_to=[], logging_steps=50,
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    started = time.perf_counter()
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                               loss=losses.CosineSimilarityLoss(model)).train()
    shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
    model.save(str(tmp))
    facts = {"base_model": base, "digest": digest, "examples": len(examples), "pairs": len(train), "epochs": epochs,
             "seed": seed, "classes": sorted({label for _, label in examples}),
             "train_s": round(time.perf_counter() - started, 1)}
    (tmp / "fit.json").write_text(json.dumps(facts, indent=2) + "\n")  # last: marks the folder whole
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return facts


def target(config: AppConfig, out: Path | None) -> tuple[Path, str]:
    """Where to write and what to fit from: ``--out`` and the config's model, or the cache of ``fitted:NAME``."""
    model = config.router.classifier.model
    if model.startswith(FITTED_PREFIX):
        return (out or fitted_dir(model)), fitted_base(model)
    if out is None:
        raise ValueError(f"classifier.model is {model!r}, not fitted:NAME: say where to write with --out")
    return out, model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.tools.fit", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="serve_config.yaml", help="the Serve config whose routes to fit")
    parser.add_argument("--out", type=Path, help="the model folder to write (default: where fitted:NAME resolves)")
    parser.add_argument("--data", help="labelled single-turn JSONL to add to the examples (its tune part only)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=8, help="partners per example, of each kind (same/other)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        config = load_app_config(args.config)
        out, base = target(config, args.out)
        extra = []
        if args.data:
            extra = [(item.texts[-1], item.label) for item in load_labelled(args.data, part="tune") if item.texts]
        facts = fit(config, out, base, extra, args.epochs, args.pairs, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    print(f"{out}: " + ("up to date" if facts.pop("up_to_date", False) else "fitted") + f" {json.dumps(facts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
