"""The embedding cache (serve_app/routing/embedding_cache.py): pure logic, no model."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.routing.embedding_cache import EmbeddingCache


def _rows(*values: float) -> np.ndarray:
    return np.array([[v, -v] for v in values], dtype=np.float32)


def _embed(cache: EmbeddingCache, texts: tuple[str, ...], encoder: dict[str, float]) -> tuple[np.ndarray, tuple]:
    rows, missing = cache.lookup(texts)
    return cache.fill(texts, rows, missing, _rows(*(encoder[t] for t in missing))), missing


def test_only_texts_not_seen_reach_the_encoder_and_rows_keep_their_places():
    cache, encoder = EmbeddingCache(8), {"a": 1.0, "b": 2.0, "c": 3.0}
    out, missing = _embed(cache, ("a", "b"), encoder)
    assert missing == ("a", "b") and np.array_equal(out, _rows(1, 2))
    out, missing = _embed(cache, ("c", "a", "b"), encoder)
    assert missing == ("c",) and np.array_equal(out, _rows(3, 1, 2))
    rows, missing = cache.lookup(("b", "c", "a"))
    assert missing == () and np.array_equal(np.stack(rows), _rows(2, 3, 1))


def test_a_text_twice_in_one_request_is_embedded_once():
    cache = EmbeddingCache(8)
    out, missing = _embed(cache, ("a", "a", "b"), {"a": 1.0, "b": 2.0})
    assert missing == ("a", "b") and np.array_equal(out, _rows(1, 1, 2))


def test_the_least_recently_used_text_goes_first():
    cache, encoder = EmbeddingCache(2), {"a": 1.0, "b": 2.0, "c": 3.0}
    _embed(cache, ("a", "b"), encoder)
    cache.lookup(("a",))  # a is used again: b is now the oldest
    _embed(cache, ("c",), encoder)
    assert len(cache) == 2
    assert cache.lookup(("a", "c"))[1] == () and cache.lookup(("b",))[1] == ("b",)


def test_size_zero_keeps_nothing():
    cache = EmbeddingCache(0)
    _embed(cache, ("a",), {"a": 1.0})
    assert len(cache) == 0 and cache.lookup(("a",))[1] == ("a",)


def test_cached_rows_do_not_share_memory_with_the_batch_they_came_from():
    cache = EmbeddingCache(4)
    batch = _rows(1, 2)
    rows, missing = cache.lookup(("a", "b"))
    cache.fill(("a", "b"), rows, missing, batch)
    batch[:] = 0  # the encoder's buffer, reused by its next call
    assert np.array_equal(np.stack(cache.lookup(("a", "b"))[0]), _rows(1, 2))


def test_texts_are_told_apart_by_content_not_by_length():
    cache = EmbeddingCache(4)
    long_a, long_b = "x" * 10_000 + "a", "x" * 10_000 + "b"
    _embed(cache, (long_a,), {long_a: 1.0})
    assert cache.lookup((long_b,))[1] == (long_b,)


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match="0 or more"):
        EmbeddingCache(-1)
