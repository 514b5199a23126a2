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


def test_variance_split_by_hand():
    from clicks2pref.eval.power import paired_split, variance_measurements, variance_split

    # contexts' panel CTRs (0.1, 0.3) and (0.5, 0.7): within 0.02 each; context means 0.2, 0.6 vary by 0.08, of
    # which 0.02 / 2 is the panels' noise
    split = variance_split([[0.1, 0.3], [0.5, 0.7]])
    assert split == {"between": pytest.approx(0.07), "within": pytest.approx(0.02), "contexts": 2, "panels": 2}
    assert variance_split([[0.1], [0.5]]) == {"between": pytest.approx(0.08), "within": None, "contexts": 2,
                                              "panels": 1}
    # the pair's split is its per-panel differences': a policy 0.1 above another on panel j, whatever j draws
    pair = paired_split([[0.2, 0.4], [0.6, 0.8]], [[0.1, 0.3], [0.5, 0.7]])
    assert pair["within"] == pytest.approx(0.0) and pair["between"] == pytest.approx(0.0)
    assert paired_split([[0.2, 0.4]], [[0.1]]) is None  # panels that do not pair
    # what the evaluate stage stores: each policy's split, each later policy against each earlier one
    results = {"baseline": {"sample_ctr": [[0.1, 0.3], [0.5, 0.7]]}, "sft": {"sample_ctr": [[0.2, 0.4], [0.6, 0.8]]},
               "canned": {"per_context_ctr": [0.1, 0.1]}}
    stored = variance_measurements(results, ["baseline", "sft", "canned"])
    assert set(stored["policies"]) == {"baseline", "sft"} and stored["policies"]["baseline"] == split
    assert stored["pairs"] == [{"policy": "sft", "against": "baseline", **pair}]


def test_panels_plan_predicts_the_ci_at_more_panels():
    """Simulated panel CTRs with known between- and within-context spread: the half-width predicted at 4× the panels
    from a 4-panel evaluation is the one a 16-panel evaluation measures, and the panels a target needs follow."""
    from clicks2pref.eval.power import panels_for, variance_split

    rng = np.random.default_rng(0)
    contexts, between, within = 300, 0.03, 0.15
    means = rng.normal(0.1, between, contexts)

    def evaluation(k):
        panels = means[:, None] + rng.normal(0, within, (contexts, k))
        est = bootstrap_mean(panels.mean(axis=1), 2000, 0.95, seed=1)
        return variance_split(panels), (est.high - est.low) / 2

    split4, half4 = evaluation(4)
    split16, half16 = evaluation(16)
    assert split4["within"] == pytest.approx(within ** 2, rel=0.1)
    assert split4["between"] == pytest.approx(between ** 2, rel=0.35)
    plan = panels_for(split4, half4, target=half16, level=0.95)
    assert plan["half_width_double"] == pytest.approx(
        1.96 * np.sqrt(split4["between"] / contexts + within ** 2 / (8 * contexts)), rel=0.1)
    assert plan["panels_needed"] in range(12, 21)  # the 16-panel half-width needs about 16 panels
    assert panels_for(split4, half4, target=half4 / 10, level=0.95)["panels_needed"] is None  # needs contexts
    assert panels_for(split4, half4, target=half4 * 2, level=0.95)["panels_needed"] == 1
    assert 0 < plan["between_share"] < 1


def test_the_report_plans_panels_from_the_stored_measurements(cfg_smoke):
    """`summarize` turns the evaluation's stored variance split and per-context CTRs into the panels table."""
    from clicks2pref.eval.power import paired_split, variance_split
    from clicks2pref.eval.results_report import summarize

    rng = np.random.default_rng(2)
    contexts = [["t%d" % (i % 6), "f%d" % i] for i in range(24)]
    difficulty = rng.normal(0.1, 0.03, (24, 1))
    noise = rng.normal(0, 0.05, (24, 8))  # panel j's random numbers are shared: both policies see noise[:, j]
    ctr = {"baseline": difficulty + noise, "sft": difficulty + 0.02 + noise + rng.normal(0, 0.01, (24, 8))}
    results = {name: {"sample_ctr": v.tolist(), "per_context_ctr": v.mean(axis=1).tolist(), "contexts": contexts,
                      "format_rate": 1.0, "distinct_2": 0.5, "mean_pairwise_cosine": 0.3, "outputs": [""] * 24,
                      "samples_per_context": 8, "n_contexts": 24} for name, v in ctr.items()}
    split = paired_split(ctr["sft"], ctr["baseline"])
    measured = {"policies": {}, "split": "test", "contexts": 24, "samples_per_context": 8, "examples": [],
                "results": results, "best_of": [],
                "variance": {"policies": {n: variance_split(v) for n, v in ctr.items()},
                             "pairs": [{"policy": "sft", "against": "baseline", **split}]}}
    report = summarize(cfg_smoke, measured)
    (row,) = report["panels"]
    assert row["pair"] == "sft − baseline" and row["panels"] == 8
    assert row["sd_within"] == pytest.approx(np.sqrt(split["within"])) and row["sd_within"] < 0.02  # coupled
    lift = next(r for r in report["rows"] if r["policy"] == "sft")
    assert row["half_width"] == pytest.approx((lift["diff_ci_high"] - lift["diff_ci_low"]) / 2)
    assert report["variance"]["policies"]["sft"]["within"] > 0.002  # each policy alone is as noisy as its panels
