"""Similarity of short texts: content-word overlap, and cosine of sentence embeddings over a panel.

Shared by the diversity reward, the rule reward's duplicate check and the click model's redundancy term.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from clicks2pref.models.registry import load_sentence_embedder

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset("a an the of to in on for and or is are do does did i my me you your it its be can how what which "
                  "when where why who should with at by from this that there as".split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP)


def overlap(a: str, b: str) -> float:
    """Jaccard overlap of content words; two texts with no content words overlap fully when equal."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return float(a.strip().lower() == b.strip().lower())
    return len(wa & wb) / len(wa | wb)


class PanelSimilarity:
    """Pairwise similarity of texts: cosine of cached normalised embeddings, or lexical overlap."""

    def __init__(self, embedder: str = "minilm-l6"):
        self.embedder, self.model, self.cache = embedder, None, {}

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if self.embedder == "lexical":
            return np.array([[overlap(a, b) for b in texts] for a in texts]).reshape(len(texts), len(texts))
        self.prefetch(texts)
        v = np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)
        return np.clip(v @ v.T, -1.0, 1.0).astype(float)

    def prefetch(self, texts) -> None:
        if self.embedder == "lexical":
            return
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            if self.model is None:
                self.model = load_sentence_embedder(self.embedder)
            vecs = self.model.encode(new, batch_size=128, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
            if len(self.cache) > 200_000:
                self.cache.clear()
            self.cache.update(zip(new, vecs.astype(np.float32)))
