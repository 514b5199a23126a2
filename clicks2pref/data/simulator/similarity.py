"""Similarity between suggestions and questions: MiniLM cosine (default) or word overlap (fast tests)."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset("a an the of to in on for and or is are do does did i my me you your it its be can how what "
                  "which when where why who should with at by from this that there as".split())


class EmbeddingSimilarity:
    """Cosine of L2-normalised sentence embeddings, cached per string (the world's questions recur)."""

    def __init__(self, model, batch_size: int = 128):
        self.model, self.batch_size, self.cache = model, batch_size, {}

    def prefetch(self, texts: Iterable[str]) -> None:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            vecs = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            self.cache.update(zip(new, vecs.astype(np.float32)))

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        self.prefetch(texts)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return np.clip(self.vectors(a) @ self.vectors(b).T, -1.0, 1.0).astype(float)


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP)


class LexicalSimilarity:
    """Jaccard overlap of content words: no model, for fast tests."""

    def prefetch(self, texts: Iterable[str]) -> None:
        pass

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        wa, wb = [content_words(t) for t in a], [content_words(t) for t in b]
        return np.array([[len(x & y) / len(x | y) if x | y else 0.0 for y in wb] for x in wa]).reshape(len(a), len(b))
