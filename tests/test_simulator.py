"""The click simulator: the oracle against hand computation and against sampled clicks."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from clicks2pref.data.simulator import ClickSimulator, SimulatorConfig, split_contexts
from clicks2pref.data.simulator.quality import QualityConfig
from clicks2pref.data.simulator.similarity import LexicalSimilarity
from clicks2pref.data.simulator.users import SegmentConfig
from clicks2pref.data.simulator.world import Facet, Topic


def sig(x):
    return 1 / (1 + math.exp(-x))


def toy_world():
    """Three facets whose questions share no content words, so lexical matches are exact fractions."""
    facets = (
        Facet("a", "howto", 1.0, "alpha bravo charlie?", (), "A."),
        Facet("b", "cost", 2.0, "delta echo foxtrot?", (), "B."),
        Facet("c", "safety", 1.0, "golf hotel india?", (), "C."),
    )
    return {"toy": Topic("toy", "test", "Toy", facets)}


def toy_sim(**kw):
    cfg = SimulatorConfig(examination=[0.9, 0.6], alpha=4.0, beta=0.5, similarity="lexical",
                          segments={"s1": SegmentConfig(3.0, {"cost": 2.0}), "s2": SegmentConfig(1.0, {"safety": 3.0})},
                          **kw)
    return ClickSimulator(cfg, LexicalSimilarity(), toy_world())


def test_oracle_equals_hand_computed_ctr():
    sim = toy_sim()
    panel = ["delta echo foxtrot?", "golf hotel juliet?"]
    # match(s1,b)=1, match(s2,b)=0; match(s1,c)=0, match(s2,c)=|{golf,hotel}|/|{golf,hotel,india,juliet}|=0.5
    a_b = [sig(4 * (1 - 0.5)), sig(4 * (0 - 0.5))]
    a_c = [sig(4 * (0 - 0.5)), sig(4 * (0.5 - 0.5))]
    ctr_b = 1 - (1 - 0.9 * a_b[0]) * (1 - 0.6 * a_b[1])
    ctr_c = 1 - (1 - 0.9 * a_c[0]) * (1 - 0.6 * a_c[1])
    # P(f*|s1) ∝ popularity x taste: b = 2*2, c = 1*1 ; P(f*|s2): b = 2*1, c = 1*3 ; P(s1) = 0.75
    p_b = 0.75 * 4 / 5 + 0.25 * 2 / 5
    expected = p_b * ctr_b + (1 - p_b) * ctr_c
    assert sim.oracle_ctr("toy", "a", panel) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(sim.attraction("toy", "a", panel), [a_b, a_c], atol=1e-12)


def test_quality_penalties_enter_the_logit():
    q = QualityConfig(not_question_penalty=-2.0, bad_length_penalty=-1.0)
    sim = toy_sim(quality=q)
    # Not a question (no '?' and no question word) and too short: both penalties.
    a = sim.attraction("toy", "a", ["delta echo"])
    assert a[0, 0] == pytest.approx(sig(4 * (2 / 3 - 0.5) - 2.0 - 1.0))  # Jaccard 2/3
    # A copy of the question just asked, and a duplicate within the panel.
    a = sim.attraction("toy", "a", ["alpha bravo charlie?", "delta echo foxtrot?", "delta echo foxtrot?"][:2])
    assert a[0, 0] == pytest.approx(sig(4 * (0 - 0.5) + q.copy_penalty))
    sim3 = ClickSimulator(SimulatorConfig(examination=[0.9, 0.6, 0.4], alpha=4.0, beta=0.5), LexicalSimilarity(),
                          toy_world())
    a = sim3.attraction("toy", "a", ["delta echo foxtrot?", "delta echo foxtrot?"])
    assert a[0, 1] == pytest.approx(sig(4 * 0.5 + q.duplicate_penalty))


def test_empirical_ctr_matches_oracle_within_001(minilm_simulator):
    sim = minilm_simulator
    world = sim.world
    topic = world["japan_travel"] if "japan_travel" in world else next(iter(world.values()))
    current, other = topic.facets[0], topic.facets[1:]
    panel = [other[0].question, other[3].paraphrases[0], "Is it worth learning some of the language first?"]
    rng = random.Random(7)
    n = 20_000
    clicked = sum(any(sim.sample(topic.id, current.id, panel, rng).clicks) for _ in range(n))
    oracle = sim.oracle_ctr(topic.id, current.id, panel)
    assert 0.05 < oracle < 0.95
    assert abs(clicked / n - oracle) < 0.01


def test_own_questions_beat_off_topic_and_malformed(minilm_simulator):
    sim = minilm_simulator
    world = sim.world
    topics = list(world.values())
    wins = 0
    for i, topic in enumerate(topics):
        current, intents = topic.facets[0], sorted(topic.facets[1:], key=lambda f: -f.popularity)
        good = [f.question for f in intents[:3]]
        off_topic = [f.question for f in topics[(i + 1) % len(topics)].facets[1:4]]
        malformed = ["1. 2. 3.", intents[0].question.rstrip("?").split()[0], "### ??? !!!"]
        copies = [current.question, current.question, current.question]
        ctr = {name: sim.oracle_ctr(topic.id, current.id, p)
               for name, p in [("good", good), ("off", off_topic), ("bad", malformed), ("copy", copies)]}
        assert ctr["good"] > max(ctr["off"], ctr["bad"], ctr["copy"]), (topic.id, ctr)
        wins += ctr["good"] > 0.5
    assert wins >= 0.8 * len(topics)


def test_position_bias_recovered_from_sampled_logs(minilm_simulator, world):
    """Randomise where one good suggestion sits among unclickable fillers; click rate per position / e."""
    sim = minilm_simulator
    e = sim.cfg.examination
    topic = next(iter(world.values()))
    current, target = topic.facets[0], max(topic.facets[1:], key=lambda f: f.popularity)
    filler = ["### ~~~", "%%% ***"]
    rng = random.Random(3)
    n_per_pos = 8000
    rates = []
    for k in range(len(e)):
        panel = filler[:k] + [target.question] + filler[k:][: len(e) - 1 - k]
        clicks = sum(sim.sample(topic.id, current.id, panel, rng).clicks[k] for _ in range(n_per_pos))
        rates.append(clicks / n_per_pos)
    # The click rate at k is e_k x E[a(target)]; the ratio to position 1 is e_k / e_1.
    np.testing.assert_allclose(np.array(rates) / rates[0], np.array(e) / e[0], atol=0.04)
    # And the absolute curve, with the expected attraction the simulator itself assigns.
    _, seg_p, _, intent_p = __import__("clicks2pref.data.simulator.users", fromlist=["x"]).intent_distribution(
        topic, current.id, sim.cfg.segments)
    a_bar = float(seg_p @ intent_p @ sim.attraction(topic.id, current.id, [target.question])[:, 0])
    np.testing.assert_allclose(np.array(rates) / a_bar, e, atol=0.03)


def test_cascade_stops_at_first_click():
    sim = toy_sim()
    rng = random.Random(0)
    for _ in range(2000):
        assert sum(sim.sample("toy", "a", ["delta echo foxtrot?", "golf hotel india?"], rng).clicks) <= 1


def test_simulator_is_deterministic_given_seed(minilm_simulator):
    world = minilm_simulator.world
    topic = next(iter(world.values()))
    panel = [f.question for f in topic.facets[1:4]]
    runs = [[minilm_simulator.sample(topic.id, topic.facets[0].id, panel, random.Random(5)).clicks for _ in range(1)]
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_split_is_by_context_and_disjoint(world):
    s = split_contexts(world, 0.15, 0.2, seed=0)
    assert set(s["train"]).isdisjoint(s["test"]) and set(s["train"]).isdisjoint(s["val"])
    assert sum(map(len, s.values())) == sum(len(t.facets) for t in world.values())
    assert s == split_contexts(world, 0.15, 0.2, seed=0)
