"""The click-model reward: its likelihood against hand-computed values, recovery of a known examination
from simulated cascade logs, impression examples, panel click scores, best-of-n and oracle agreement."""

import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from clicks2pref.config.pairs import PairConfig
from clicks2pref.data.impressions import impression_examples, impression_splits, indexed
from clicks2pref.data.simulator.click_model import sample_clicks
from clicks2pref.eval.best_of import best_of_n, pick_best, within_context_spearman
from clicks2pref.eval.oracle_agreement import oracle_agreement
from clicks2pref.objectives.click_model import (NOTHING_ABOVE, click_nll, examination, fit_item_examination,
                                                 garm_attraction, logit, panel_click_probability, redundancy_discount,
                                                 similarity_above)
from clicks2pref.rewards.base import panel_scores

D = torch.float64


def Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_cascade_and_pbm_likelihoods_match_hand_computed_values():
    a = torch.tensor([[0.5, 0.2, 0.1], [0.5, 0.2, 0.1]], dtype=D)
    e = torch.tensor([1.0, 0.5, 0.25], dtype=D)
    clicks = torch.tensor([[0, 1, 0], [0, 0, 0]])
    lengths = torch.tensor([3, 2])
    w = torch.tensor([2.0, 1.0], dtype=D)
    # row 1: p = (0.5, 0.1, 0.025), click at 2 -> log(1 - .5) + log(.1) (cascade: position 3 never examined)
    row1 = math.log(0.5) + math.log(0.1)
    row2 = math.log(0.5) + math.log(0.9)  # no click, two suggestions shown
    expected = -(2 * row1 + row2) / 3
    assert click_nll(a, e, clicks, lengths, w, "cascade").item() == pytest.approx(expected, abs=1e-12)
    expected_pbm = -(2 * (row1 + math.log(1 - 0.025)) + row2) / 3
    assert click_nll(a, e, clicks, lengths, w, "pbm").item() == pytest.approx(expected_pbm, abs=1e-12)
    with pytest.raises(ValueError, match="unknown click model"):
        click_nll(a, e, clicks, lengths, w, "dbn")


def test_examination_anchors_position_one_and_attraction_is_the_gaussian_exceedance():
    e = examination(1.0, torch.tensor([logit(0.6), logit(0.4)], dtype=D))
    assert e.tolist() == pytest.approx([1.0, 0.6, 0.4])
    a = garm_attraction(torch.tensor([0.5], dtype=D), torch.tensor([0.75], dtype=D))
    assert a.item() == pytest.approx(Phi(0.5 / math.sqrt(1 + 0.75**2)), abs=1e-12)
    # P(any click) = 1 − Π(1 − e_k a_k)
    p = panel_click_probability(torch.tensor([0.5, 0.5, 0.5], dtype=D), e)
    assert p.item() == pytest.approx(1 - 0.5 * 0.7 * 0.8)


def test_the_click_model_recovers_a_known_examination_from_shuffled_cascade_logs():
    """30 items of known attraction, shown in random orders to simulated cascade users: the per-item click
    model recovers e relative to position 1 (the truth is 0.9, 0.6, 0.4)."""
    rng = random.Random(0)
    true_e = [0.9, 0.6, 0.4]
    true_a = [rng.uniform(0.05, 0.9) for _ in range(30)]
    rows = [rng.sample(range(30), 3) for _ in range(6000)]
    clicks = sample_clicks(np.array(true_a)[rows], true_e, 1.0, np.random.default_rng(0))
    items, clicks = torch.tensor(rows), torch.tensor(clicks)
    lengths, w = torch.full((len(rows),), 3), torch.ones(len(rows), dtype=D)
    e, redundancy = fit_item_examination(items, clicks, lengths, w, 30, anchor=1.0, steps=1500)
    assert redundancy is None
    # identified up to the scale of position 1: e_k / e_1 of the truth
    assert e[1] == pytest.approx(0.6 / 0.9, abs=0.05) and e[2] == pytest.approx(0.4 / 0.9, abs=0.05)


def test_redundancy_discount_and_similarity_above_match_hand_computed_values():
    sim = torch.tensor([[1.0, 0.2, 0.9], [0.2, 1.0, 0.5], [0.9, 0.5, 1.0]], dtype=D)
    above = similarity_above(sim, 3)
    assert above.tolist() == [NOTHING_ABOVE, 0.2, 0.9]
    assert similarity_above(sim[:2, :2], 3).tolist() == [NOTHING_ABOVE, 0.2, NOTHING_ABOVE]  # past the panel
    g = redundancy_discount(above, 10.0, 0.9)
    assert g.tolist() == pytest.approx([1.0, 1 - 1 / (1 + math.exp(7.0)), 0.5])
    # the discount multiplies the attraction inside the likelihood
    a, e = torch.tensor([[0.5, 0.4, 0.8]], dtype=D), torch.tensor([1.0, 1.0, 1.0], dtype=D)
    clicks, lengths, w = torch.tensor([[0, 0, 1]]), torch.tensor([3]), torch.ones(1, dtype=D)
    expected = -(math.log(0.5) + math.log(1 - 0.4 * g[1].item()) + math.log(0.8 * 0.5))
    assert click_nll(a, e, clicks, lengths, w, "cascade", g[None]).item() == pytest.approx(expected, abs=1e-12)


def test_the_click_model_recovers_a_planted_redundancy_term_from_shuffled_logs():
    """Items in pairs of near-repeats (similarity 0.95), others 0 to 0.5 apart: a repeat shown below its twin
    keeps g = 1 − sigmoid(20 (0.95 − 0.7)) ≈ 0.007 of its attraction. The fit finds a threshold between
    the two kinds of similarity and the discount of a repeat, with e beside it."""
    rng = random.Random(0)
    n, true_e, w_true, b_true = 30, [0.9, 0.6, 0.4], 20.0, 0.7
    true_a = [rng.uniform(0.2, 0.9) for _ in range(n)]
    sim = torch.tensor([[rng.uniform(0.0, 0.5) for _ in range(n)] for _ in range(n)], dtype=D)
    sim = (sim + sim.T) / 2
    for i in range(0, n, 2):
        sim[i, i + 1] = sim[i + 1, i] = 0.95
    sim.fill_diagonal_(1.0)
    rows, attraction, aboves = [], [], []
    for _ in range(8000):
        first = rng.randrange(0, n, 2)
        panel = [first, first + 1, rng.choice([i for i in range(n) if i // 2 != first // 2])]
        rng.shuffle(panel)
        above = similarity_above(sim[panel][:, panel], 3)
        g = redundancy_discount(above, w_true, b_true).tolist()
        rows.append(panel)
        aboves.append(above)
        attraction.append([true_a[i] * g[k] for k, i in enumerate(panel)])
    clicks = sample_clicks(np.array(attraction), true_e, 1.0, np.random.default_rng(0))
    items, clicks = torch.tensor(rows), torch.tensor(clicks)
    lengths, w = torch.full((len(rows),), 3), torch.ones(len(rows), dtype=D)
    e, red = fit_item_examination(items, clicks, lengths, w, n, steps=1500, sim_above=torch.stack(aboves))
    # position 3 sees a repeat's twin above it in two impressions of three, so e_3 is the noisier one
    assert e[1] == pytest.approx(0.6 / 0.9, abs=0.05) and e[2] == pytest.approx(0.4 / 0.9, abs=0.1)
    assert red["threshold"] == pytest.approx(b_true, abs=0.1) and red["weight"] > 5
    g = redundancy_discount(torch.tensor([0.95, 0.25], dtype=D), red["weight"], red["threshold"]).tolist()
    assert g[0] < 0.1 and g[1] > 0.9


def record(i, week, panel, clicks, pid="p0", ctx="hi"):
    return {"impression_id": f"i{i}", "week": week, "policy": "pi", "panel_id": pid, "suggestions": panel,
            "clicks": clicks, "context": [{"role": "user", "content": ctx}, {"role": "assistant", "content": "ok"}],
            "topic": "t", "facet": "f"}


def test_indexed_examples_share_one_index_per_context_and_suggestion():
    records = [record(0, 1, ["a", "b", "c"], [0, 1, 0]), record(1, 1, ["c", "a"], [0, 0], pid="p1")]
    items, clicks, lengths, counts, n = indexed(impression_examples(records), 3)
    assert n == 3 and items.tolist() == [[0, 1, 2], [2, 0, 0]] and lengths.tolist() == [3, 2]
    assert clicks.tolist() == [[0, 1, 0], [0, 0, 0]] and counts.tolist() == [1.0, 1.0]


def test_impression_examples_count_users_per_order_and_click_pattern_and_split_by_week():
    records = [record(0, 1, ["a", "b"], [0, 1]), record(1, 1, ["a", "b"], [0, 1]), record(2, 1, ["b", "a"], [0, 0]),
               record(3, 4, ["a", "b"], [1, 0], pid="p9")]
    ex = impression_examples(records)
    assert sorted((e["suggestions"], e["clicks"], e["count"]) for e in ex) == [
        (["a", "b"], [0, 1], 2), (["a", "b"], [1, 0], 1), (["b", "a"], [0, 0], 1)]
    splits = impression_splits(records, PairConfig(val_fraction=0.0))
    assert sum(e["count"] for e in splits["train"]) == 3 and sum(e["count"] for e in splits["iid"]) == 1
    assert splits["val"] == []


def test_panel_click_score_is_the_probability_of_any_click_and_ignores_empty_positions():
    e = [1.0, 0.5, 0.25]
    out = panel_scores([[0.5, 0.5, 0.5], [0.5], []], e, missing_score=-1.0, panel="click").tolist()
    assert out == pytest.approx([1 - 0.5 * 0.75 * 0.875, 0.5, 0.0])


def test_best_of_n_serves_the_panel_the_reward_ranks_first():
    result = {"sample_ctr": [[0.1, 0.5, 0.3], [0.2, 0.2, 0.4]], "samples": [["a", "b", "c"], ["d", "e", "f"]],
              "format_rate": 1.0, "contexts": [["t", "f1"], ["t", "f2"]]}
    scores = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 1.0]])
    assert pick_best(scores, 3).tolist() == [1, 0]
    assert pick_best(scores, 1).tolist() == [0, 0]
    best = best_of_n(result, scores, 3)
    assert best["per_context_ctr"] == [0.5, 0.2] and best["outputs"] == ["b", "d"]
    assert np.mean(best["per_context_ctr"]) == pytest.approx(0.35) and best["oracle_max_ctr"] == pytest.approx(0.45)
    # context 1 ranks like the oracle (ρ = 1); context 2: scores (5, 0, 1) vs oracle (.2, .2, .4)
    rho2 = spearmanr([5.0, 0.0, 1.0], [0.2, 0.2, 0.4]).statistic
    assert best["reward_spearman"] == pytest.approx((1.0 + rho2) / 2)
    with pytest.raises(ValueError, match="needs 4 samples"):
        best_of_n(result, scores, 4)
    assert within_context_spearman(np.ones((2, 3)), np.asarray(result["sample_ctr"]))["contexts"] == 0


def test_oracle_agreement_counts_within_panel_pairs_ordered_like_the_oracle():
    scores = np.array([3.0, 2.0, 1.0, 0.0])
    oracle = np.array([0.1, 0.2, 0.3, 0.3])
    out = oracle_agreement(scores, oracle, [[0, 1, 2], [2, 3]])
    assert out["oracle_spearman"] == pytest.approx(spearmanr(scores, oracle).statistic)
    # panel 1: all three pairs reversed; panel 2: tie in the oracle, not counted
    assert out["oracle_within_panel"] == 0.0 and out["oracle_panel_pairs"] == 3


def test_an_unknown_redundancy_embedder_fails_naming_the_key():
    from clicks2pref.errors import ConfigError
    from clicks2pref.models.similarity import PanelSimilarity
    from clicks2pref.stages.rm import similarity_above_examples

    examples = [{"suggestions": ["a?", "b?"], "context": [], "clicks": [0, 0], "count": 1}]
    with pytest.raises(ConfigError, match="reward_model.click_model.redundancy"):
        similarity_above_examples(examples, 3, PanelSimilarity("./no-such-embedder"))  # a path: fails without asking the hub
    assert similarity_above_examples(examples, 3, PanelSimilarity("lexical")).shape == (1, 3)


def test_redundancy_in_training_without_the_term_fails_naming_the_key(tmp_path):
    from clicks2pref.config import validate
    from clicks2pref.errors import ConfigError
    from tests.conftest import compose_config

    cfg = compose_config(["reward_model.click_model.redundancy=null",
                          "reward_model.click_model.redundancy_in_training=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"^reward_model\.click_model\.redundancy_in_training: "):
        validate(cfg)
