"""CTR estimates with bootstrap confidence intervals.

Contexts of one topic share the topic's intents and words, so they are not independent draws: with
`clusters` (a topic per value) the bootstrap resamples whole topics and the estimate is the mean over
the resampled topics' contexts (a cluster bootstrap of the ratio sum / count).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.stats import bootstrap

from clicks2pref.config.data import SPLIT_BY
from clicks2pref.data.simulator.world import context_splits, load_world


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def cluster_labels(contexts: Sequence, by: str) -> Optional[list]:
    """The bootstrap's resampling unit for (topic, facet) contexts: their topic, or None (each context alone)."""
    if by not in SPLIT_BY:
        raise ValueError(f"ci_clusters '{by}' is not one of {', '.join(SPLIT_BY)}")
    return [c[0] for c in contexts] if by == "topic" else None


def split_clusters(cfg, split: str, n: Optional[int] = None) -> Optional[list]:
    """The bootstrap unit of each context of `split` in the order every evaluation uses (its first `n`), so a
    recorded per-context CTR can be resampled again, paired with another policy's."""
    contexts = context_splits(load_world(cfg.simulator.world, cfg.simulator.domains), cfg.data.split)[split][:n]
    return cluster_labels(contexts, cfg.eval.ci_clusters)


def bootstrap_mean(values, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                   clusters: Optional[Sequence] = None) -> Estimate:
    """Mean with a percentile bootstrap CI (scipy), over values or, with `clusters`, over whole clusters;
    a single value (or cluster) gets a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if clusters is not None and len(clusters) != x.size:
        raise ValueError(f"{len(clusters)} cluster labels for {x.size} values")
    groups = None if clusters is None else [x[np.asarray(clusters, dtype=object) == c] for c in dict.fromkeys(clusters)]
    if x.size < 2 or np.all(x == x[0]) or (groups is not None and len(groups) < 2):
        m = float(x.mean()) if x.size else float("nan")
        return Estimate(m, m, m, int(x.size))
    rng = np.random.default_rng(seed)
    if groups is None:
        res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                        random_state=rng)
    else:
        sums, counts = np.array([g.sum() for g in groups]), np.array([g.size for g in groups], dtype=float)
        res = bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis), paired=True,
                        vectorized=True, n_resamples=n_resamples, confidence_level=level, method="percentile",
                        random_state=rng)
    return Estimate(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                    int(x.size))
