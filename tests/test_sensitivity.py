"""Re-scoring stored panels under another user model: per-context means, paired verdicts, the panels found."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clicks2pref.eval.sensitivity import Verdict, per_context_ctr, rescore, stored_panels, verdicts
from tests.test_simulator import toy_sim


def test_a_contexts_ctr_is_the_mean_of_its_panels_oracle_ctr():
    sim = toy_sim()
    panels = [[["delta echo foxtrot?", "golf hotel juliet?"], ["alpha bravo?"]], [], [["golf hotel india?"]]]
    contexts = [("toy", "a"), ("toy", "a"), ("toy", "b")]
    got = per_context_ctr(sim, contexts, panels)
    want = [np.mean([sim.oracle_ctr("toy", "a", p) for p in panels[0]]), 0.0, sim.oracle_ctr("toy", "b", panels[2][0])]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_rescore_adds_the_canned_and_the_ideal_panel_of_the_user_model():
    sim = toy_sim()
    contexts = [("toy", "a"), ("toy", "b")]
    rows = rescore(sim, contexts, {"sft": [[["delta echo foxtrot?"]], [["alpha bravo charlie?"]]]}, ["What is {title}?"])
    assert set(rows) == {"sft", "canned", "ideal"}
    assert np.all(rows["ideal"] >= rows["sft"] - 1e-12) and np.all(rows["ideal"] >= rows["canned"] - 1e-12)


def test_verdicts_are_paired_differences_with_their_interval_and_word():
    rows = {"sft": np.array([0.2, 0.3, 0.25, 0.35]), "canned": np.array([0.1, 0.2, 0.15, 0.25]),
            "baseline": np.array([0.2, 0.3, 0.25, 0.35]), "grpo": np.array([0.1, 0.4, 0.2, 0.4])}
    found = verdicts(rows, None, 200, 0.95, 0)
    assert set(found) == {"sft_over_canned", "sft_over_baseline", "grpo_over_sft"}  # no best_of row: no claim
    assert found["sft_over_canned"].diff == pytest.approx(0.1) and found["sft_over_canned"].word == "holds"
    assert found["sft_over_baseline"].word == "not separated"
    assert Verdict(-0.1, -0.2, -0.01).word == "reversed" and Verdict(0.0, -0.1, 0.1).word == "not separated"


def test_stored_panels_come_from_the_evaluation_cache_of_each_policy(tmp_path):
    contexts = [["toy", "a"], ["toy", "b"]]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "k1.json").write_text(json.dumps(
        {"policy_id": "sft:abc", "contexts": contexts, "samples_per_context": 3,
         "samples": [["1. a b c?\n2. d e f?", "x", "1. g?"], ["1. h i?", "1. j?", "1. k?"]]}))
    (tmp_path / "eval" / "k2.json").write_text(json.dumps(  # another context set: not this evaluation's
        {"policy_id": "sft:abc", "contexts": contexts[:1], "samples_per_context": 3, "samples": [["1. z?"] * 3]}))
    evaluation = {"policies": {"sft": "sft:abc"}, "samples_per_context": 2,
                  "results": {"sft": {"contexts": contexts}, "sft+bo2": {"outputs": ["1. d e f?", "1. j?"]}},
                  "best_of": [{"policy": "sft+bo2", "of": "sft"}]}
    panels = stored_panels(tmp_path, evaluation, 3)
    assert panels["sft"] == [[["a b c?", "d e f?"], []], [["h i?"], ["j?"]]]
    assert panels["best_of"] == [[["d e f?"]], [["j?"]]]
    evaluation["policies"]["grpo"] = "grpo:def"
    with pytest.raises(FileNotFoundError, match="grpo"):
        stored_panels(tmp_path, evaluation, 3)
