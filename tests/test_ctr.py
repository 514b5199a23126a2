"""CTR estimates: the cluster bootstrap resamples whole topics."""
from __future__ import annotations

import numpy as np
import pytest

from clicks2pref.eval.ctr import bootstrap_mean


def test_cluster_bootstrap_resamples_whole_topics():
    # topic a: two contexts at 0, topic b: four at 1. Resampling topics gives aa -> 0, bb -> 1, ab/ba -> 4/6,
    # each aa and bb a quarter of the time: the 95 % percentile interval is exactly [0, 1].
    values, topics = [0, 0, 1, 1, 1, 1], ["a", "a", "b", "b", "b", "b"]
    est = bootstrap_mean(values, 4000, 0.95, seed=0, clusters=topics)
    assert (est.mean, est.low, est.high) == (pytest.approx(4 / 6), 0.0, 1.0)
    # resampling the six contexts as if independent is much narrower
    naive = bootstrap_mean(values, 4000, 0.95, seed=0)
    assert naive.low > 0.3


def test_cluster_bootstrap_of_equal_clusters_matches_the_bootstrap_of_cluster_means():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(12, 5))  # 12 topics, 5 contexts each
    topics = np.repeat(np.arange(12), 5)
    clustered = bootstrap_mean(values.ravel(), 2000, 0.9, seed=3, clusters=list(topics))
    means = bootstrap_mean(values.mean(axis=1), 2000, 0.9, seed=3)
    assert clustered.mean == pytest.approx(means.mean)
    assert (clustered.low, clustered.high) == (pytest.approx(means.low, abs=0.02), pytest.approx(means.high, abs=0.02))


def test_one_cluster_or_mismatched_labels():
    assert bootstrap_mean([0.2, 0.4], clusters=["t", "t"]).low == pytest.approx(0.3)
    with pytest.raises(ValueError, match="2 cluster labels for 3 values"):
        bootstrap_mean([1, 2, 3], clusters=["a", "b"])
