"""The diversity reward, 1 − max pairwise cosine within a panel, and the diversity metrics of reports.

Embeddings come from a sentence embedder in the model registry (MiniLM by default); `lexical` uses
word-overlap (Jaccard of content words) instead, for fast tests. A panel with fewer than two
suggestions has nothing to be diverse about and scores `single_score`.

Its `_target_` config, `DiversityRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from clicks2pref.config.rewards import DiversityRewardConfig  # noqa: F401 (re-exported)
from clicks2pref.models.similarity import PanelSimilarity
from clicks2pref.rewards.base import RewardBatch


def max_pairwise(sim: np.ndarray) -> float:
    n = sim.shape[0]
    return float(sim[np.triu_indices(n, 1)].max()) if n > 1 else float("nan")


def mean_pairwise(sim: np.ndarray) -> float:
    n = sim.shape[0]
    return float(sim[np.triu_indices(n, 1)].mean()) if n > 1 else float("nan")


def distinct_n(panels: Sequence[Sequence[str]], n: int = 2) -> float:
    """Distinct-n over all suggestions: unique word n-grams / all word n-grams (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for panel in panels for s in panel
             for words in [s.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class DiversityReward:
    def __init__(self, embedder: str = "minilm-l6", single_score: float = 0.0):
        self.similarity, self.single_score = PanelSimilarity(embedder), float(single_score)

    def setup(self, resources) -> None:  # one embedding cache with the redundancy term (same suggestions)
        self.similarity = resources.similarities.setdefault(self.similarity.embedder, self.similarity)

    def __call__(self, batch: RewardBatch) -> Tensor:
        panels = batch.panels
        self.similarity.prefetch(s for p in panels for s in p)
        return torch.tensor([1.0 - max_pairwise(self.similarity.matrix(p)) if len(p) > 1 else self.single_score
                             for p in panels], dtype=torch.float64)

    def mean_pairwise_cosine(self, panels: Sequence[Sequence[str]]) -> float:
        """Mean over panels (with two or more suggestions) of the mean pairwise similarity."""
        self.similarity.prefetch(s for p in panels for s in p)
        values = [mean_pairwise(self.similarity.matrix(p)) for p in panels if len(p) > 1]
        return float(np.mean(values)) if values else float("nan")
