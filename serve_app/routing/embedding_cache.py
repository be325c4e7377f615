"""The embeddings of texts the classifier has seen lately, so a thread's turns are embedded once.

A conversation re-sends its earlier turns with every request, and an agent's tool loop re-sends the same user
turns (and system prompt) at every step: without a cache each request embeds all of them again. A text's
embedding depends on the text alone (the encoder is fixed for a replica's life), so a seen text's row can be
reused as is, and a routing update (new examples, thresholds) leaves it valid.

Keys are a 16-byte BLAKE2b digest of the text: a long pasted prompt costs its hash, not its length, in memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """At most ``size`` text embeddings, the least recently used dropped first; size 0 keeps nothing.

    Not thread-safe: the classifier calls it from its event loop only.
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache size must be 0 or more, not {size}")
        self.size = size
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, texts: Sequence[str]) -> tuple[list[np.ndarray | None], tuple[str, ...]]:
        """Each text's cached row (None where not cached), and the distinct texts that were not."""
        rows: list[np.ndarray | None] = []
        missing: dict[str, None] = {}  # ordered and distinct: a text twice in one request is embedded once
        for text in texts:
            row = self._rows.get(key := text_key(text)) if self.size else None
            if row is None:
                missing[text] = None
            else:
                self._rows.move_to_end(key)
            rows.append(row)
        return rows, tuple(missing)

    def fill(self, texts: Sequence[str], rows: list[np.ndarray | None], missing: Sequence[str],
             vectors: np.ndarray) -> np.ndarray:
        """``texts``' embeddings as one array: the cached ``rows`` with ``vectors`` (the rows of ``missing``, in
        its order) in their places. The new rows are cached."""
        new = dict(zip(missing, vectors, strict=True))
        for text, vector in new.items():
            self._put(text_key(text), vector.copy())  # a row of its own, not a view keeping the batch alive
        return np.stack([new[text] if row is None else row for text, row in zip(texts, rows, strict=True)])

    def _put(self, key: bytes, vector: np.ndarray) -> None:
        if not self.size:
            return
        self._rows[key] = vector
        self._rows.move_to_end(key)
        if len(self._rows) > self.size:
            self._rows.popitem(last=False)
