"""Fusion: stage one recovers the weights of a known logistic click model; stage two respects constraints."""
from __future__ import annotations

import numpy as np
import pytest

from clicks2pref.rewards.fusion import (FusionConfig, centre_within, click_auc, fit_weights, fuse, grid_points,
                                       pareto_mask)


def synthetic(n=20000, w=(1.5, 0.5, 1.0), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(w)))
    p = 1 / (1 + np.exp(-(X @ np.array(w) - 0.3)))
    return X, (rng.random(n) < p).astype(int)


def test_stage_one_recovers_known_weights():
    w = np.array([1.5, 0.5, 1.0])
    X, y = synthetic(w=w)
    fit = fit_weights(X, y, C=1e4)
    assert fit["weights"] == pytest.approx(w / w.sum(), abs=0.02)
    assert fit["coef"] == pytest.approx(w, rel=0.1)


def test_stage_one_clips_a_harmful_component_to_zero():
    X, y = synthetic(w=(1.0, -0.8, 0.5))
    weights = fit_weights(X, y, C=1e4)["weights"]
    assert weights[1] == 0.0 and weights.sum() == pytest.approx(1.0)
    assert weights[0] / weights[2] == pytest.approx(2.0, rel=0.15)


def test_grid_holds_the_stage_one_point_and_normalised_neighbours():
    W = grid_points(np.array([0.7, 0.3, 0.0]), [0.5, 1.0, 2.0], floor=0.05)
    assert np.allclose(W.sum(1), 1.0)
    assert any(np.allclose(w, [0.7, 0.3, 0.0]) for w in W)
    assert (W[:, 2] > 0).any()  # the floor lets a zeroed component back in
    assert len(np.unique(np.round(W, 6), axis=0)) == len(W)


def test_pareto_mask():
    obj = np.array([[1, 1], [2, 0], [0.5, 0.5], [2, 1], [np.nan, 3]])
    assert pareto_mask(obj).tolist() == [False, False, False, True, True]


def test_stage_two_keeps_the_best_auc_point_meeting_the_constraints():
    # two components: c0 predicts clicks; c1 (a rule score) does not, but only weighting it picks clean candidates
    rng = np.random.default_rng(1)
    X, y = synthetic(n=5000, w=(2.0, 0.0))
    C, S = 40, 4
    cand = rng.normal(scale=0.3, size=(C, S, 2))
    clean = rng.random((C, S)) < 0.5
    cand[..., 1] = np.where(clean, 1.0, -1.0)
    in_dist = np.ones((C, S), dtype=bool)
    cfg = FusionConfig(min_rule_pass=0.85, min_in_distribution=0.5)
    cfg.grid.factors, cfg.grid.floor = [0.5, 1.0, 2.0, 4.0], 0.1
    out = fuse(["click", "rule"], X, y, cfg, cand, clean, in_dist)
    assert out["constraints_met"]
    chosen = out["chosen"]
    assert chosen["rule_pass"] >= 0.85 and out["weights"]["rule"] > out["stage_one"]["weights"]["rule"]
    feasible = [r for r in out["front"] if r["rule_pass"] >= 0.85]
    assert chosen["auc"] == max(r["auc"] for r in feasible)
    assert chosen["auc"] == pytest.approx(click_auc(X @ np.array(list(out["weights"].values())), y))
    # without candidates there are no constraints: the best-AUC point wins
    free = fuse(["click", "rule"], X, y, cfg)
    assert free["chosen"]["auc"] >= chosen["auc"] and free["weights"]["click"] > 0.9


def test_centring_within_contexts_against_hand_computed_values():
    scores = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 5.0], [2.0, 0.0], [4.0, 3.0]])
    out = centre_within(scores, ["a", "a", "b", "c", "c"])
    assert out.tolist() == [[-1.0, -5.0], [1.0, 5.0], [0.0, 0.0], [-1.0, -1.5], [1.0, 1.5]]


def test_within_context_fit_ignores_what_only_separates_contexts():
    # clicks follow c0 within each context; c1 only says which contexts are easy (a between-context effect)
    rng = np.random.default_rng(2)
    contexts, panels = 400, 4
    ease = rng.normal(scale=2.0, size=contexts)
    groups = np.repeat(np.arange(contexts), panels)
    c0 = rng.normal(size=contexts * panels)
    c1 = ease[groups] + rng.normal(scale=0.05, size=len(groups))
    X = np.stack([c0, c1], axis=1)
    rows = np.repeat(np.arange(len(X)), 30)  # 30 users per panel
    p = 1 / (1 + np.exp(-(1.0 * c0 + ease[groups] - 1.0)))[rows]
    y = (rng.random(len(rows)) < p).astype(int)
    pooled = fit_weights(X[rows], y, C=1e4)["weights"]
    within = fit_weights(centre_within(X, groups)[rows], y, C=1e4)["weights"]
    assert pooled[1] > 0.4  # the pooled fit gives the between-context score half the weight
    assert within[0] > 0.9  # centred, only the score that orders panels of one context keeps weight


def test_bad_fusion_settings_name_their_key():
    from clicks2pref.errors import ConfigError

    with pytest.raises(ConfigError, match="logs"):
        FusionConfig(logs="baseline")
    with pytest.raises(ConfigError, match="kappa_grid"):
        FusionConfig(kappa_grid=[0.5, -1.0])


def test_mean_only_keeps_kappa_zero_through_fusion(tmp_path):
    """Fusion fits κ for presets that leave it free; mean_only's κ = 0 is the ablation itself and stays."""
    from tests.conftest import compose_config
    from clicks2pref.stages.fusion import fit_kappa

    garm = object()  # fit_kappa must neither score nor replace it
    cfg = compose_config(["stage=grpo", "rewards=mean_only"], tmp_path)
    components = {"garm": garm}
    assert fit_kappa(cfg, components, None, None, [], np.zeros(0), np.zeros(0)) == (None, {})
    assert components["garm"] is garm and cfg.rewards.garm.kappa == 0.0
    full = compose_config(["stage=grpo", "rewards=full"], tmp_path)
    assert full.rewards.fit_kappa and full.fusion.kappa_grid
