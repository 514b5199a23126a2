"""The click simulator: the oracle against hand computation and against sampled clicks."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from clicks2pref.config.simulator import AnsweredConfig, IntentConfig, QualityConfig, SegmentConfig, SimulatorConfig
from clicks2pref.data.simulator import ClickSimulator, split_contexts
from clicks2pref.data.simulator.similarity import LexicalSimilarity
from clicks2pref.data.simulator.click_model import ctr_given_logits, sample_cascade, sigmoid
from clicks2pref.data.simulator.users import intent_distribution
from clicks2pref.data.simulator.world import Facet, FollowUp, Topic, WorldError, load_world


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


V1 = dict(discrimination=0.0, answered=AnsweredConfig(penalty=0.0), noise_std=0.0, satisfaction=1.0,
          intents=IntentConfig(related_boost=1.0, derived_related=0, covered_weight=1.0, follow_up_share=0.0,
                               abandonment=0.0))  # every switch of the contextual model off, as simulator=v1


def toy_sim(**kw):
    cfg = SimulatorConfig(examination=[0.9, 0.6], alpha=4.0, beta=0.5, similarity="lexical", **V1,
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
    sim3 = ClickSimulator(SimulatorConfig(examination=[0.9, 0.6, 0.4], alpha=4.0, beta=0.5, **V1), LexicalSimilarity(),
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


@pytest.fixture(scope="module")
def v1_simulator():
    """The first user model (simulator=v1) with MiniLM, built once."""
    from omegaconf import OmegaConf

    from clicks2pref.config import compose_job
    from clicks2pref.data.simulator import build_simulator
    from tests.conftest import CONF_DIR

    return build_simulator(OmegaConf.to_object(compose_job(CONF_DIR, ["simulator=v1"]).simulator))


def test_own_questions_beat_off_topic_and_malformed(v1_simulator):
    sim = v1_simulator
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


def test_position_bias_recovered_from_sampled_logs(v1_simulator):
    """Randomise where one good suggestion sits among unclickable fillers; click rate per position / e."""
    sim = v1_simulator
    world = sim.world
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
    it = intent_distribution(topic, current.id, sim.cfg.segments, sim.cfg.intents)
    a_bar = float(it.segment_p @ it.intent_p @ sim.attraction(topic.id, current.id, [target.question])[:, 0])
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


def test_split_by_topic_keeps_topics_whole(world):
    s = split_contexts(world, 0.15, 0.2, seed=0, by="topic")
    topics = {k: {t for t, _ in v} for k, v in s.items()}
    assert topics["test"].isdisjoint(topics["train"] | topics["val"]) and topics["val"].isdisjoint(topics["train"])
    assert sum(map(len, s.values())) == sum(len(t.facets) for t in world.values())
    with pytest.raises(WorldError, match="data.split.by"):
        split_contexts(world, 0.15, 0.2, seed=0, by="facet")


# --- the contextual user model -------------------------------------------------------------------------------

def contextual_world():
    """Facet a's conversation leads to b (related), already answers c (covers) and has its own follow-up u."""
    facets = (
        Facet("a", "howto", 1.0, "alpha bravo charlie?", (), "kilo lima mike.", related=("b",), covers=("c",),
              follow_ups=(FollowUp("u", "howto", 1.0, "papa quebec romeo?", ()),)),
        Facet("b", "cost", 2.0, "delta echo foxtrot?", (), "B."),
        Facet("c", "safety", 1.0, "golf hotel india?", (), "C."),
        Facet("d", "cost", 1.0, "juliet november oscar?", (), "D."),
    )
    return {"toy": Topic("toy", "test", "Toy", facets)}


def contextual_sim(**kw):
    intents = IntentConfig(related_boost=3.0, derived_related=0, covered_weight=0.5, follow_up_share=0.4,
                           abandonment=0.25)
    args = dict(examination=[0.9, 0.6], alpha=4.0, beta=0.2, similarity="lexical", intents=intents,
                discrimination=0.5, answered=AnsweredConfig(penalty=0.0), noise_std=0.0, satisfaction=1.0)
    return ClickSimulator(SimulatorConfig(**{**args, **kw}), LexicalSimilarity(), contextual_world())


def test_intents_follow_the_conversation():
    it = contextual_sim().intents("toy", "a")
    assert [i.id for i in it.intents] == ["b", "c", "d", "u"]
    # facets: b = 2 x 3 (related), c = 1 x 0.5 (covered), d = 1; share 0.6 of the 0.75 who have an intent
    w = np.array([6.0, 0.5, 1.0]) / 7.5
    np.testing.assert_allclose(it.intent_p[0], 0.75 * np.r_[0.6 * w, 0.4], atol=1e-12)
    assert it.intent_p.sum() == pytest.approx(0.75)
    # from another facet the follow-up u is not an intent at all
    assert [i.id for i in contextual_sim().intents("toy", "b").intents] == ["a", "c", "d"]


def test_discriminative_match_against_hand_computation():
    sim = contextual_sim()
    # "delta echo foxtrot?" matches b exactly (1) and nothing else: mean over the 4 intents is 1/4
    specific = sim.logits("toy", "a", ["delta echo foxtrot?"])[:, 0]
    np.testing.assert_allclose(specific, 4.0 * (np.array([1.0, 0, 0, 0]) - 0.5 * 0.25 - 0.2), atol=1e-12)
    # a question sharing one word with each of b, c, d: Jaccard 1/5 with each, 0 with u; mean 3/20
    hedge = sim.logits("toy", "a", ["delta golf juliet?"])[:, 0]
    np.testing.assert_allclose(hedge, 4.0 * (np.array([0.2, 0.2, 0.2, 0]) - 0.5 * 0.15 - 0.2), atol=1e-12)


def test_answered_suggestions_lose_attraction():
    sim = contextual_sim(answered=AnsweredConfig(penalty=2.0, threshold=0.5))
    plain = contextual_sim()
    # "kilo lima mike?" is the answer's words (Jaccard 1 with the answer): the full penalty
    np.testing.assert_allclose(sim.logits("toy", "a", ["kilo lima mike?"]),
                               plain.logits("toy", "a", ["kilo lima mike?"]) - 2.0, atol=1e-12)
    # Jaccard 2/4 = 0.5 with the answer: at the threshold, no penalty
    np.testing.assert_allclose(sim.logits("toy", "a", ["kilo lima zulu?"]),
                               plain.logits("toy", "a", ["kilo lima zulu?"]), atol=1e-12)


def test_quadrature_over_user_propensity_matches_direct_integration():
    from scipy import integrate

    logits, e, sd = np.array([[0.3, -1.2], [1.5, 0.2]]), [0.9, 0.6], 1.3
    got = ctr_given_logits(logits, e, sd, 24)

    def direct(row):
        f = lambda x: (1 - np.prod(1 - np.array(e) * sigmoid(row + x))) * np.exp(-x * x / (2 * sd * sd))  # noqa: E731
        return integrate.quad(f, -12 * sd, 12 * sd)[0] / (sd * np.sqrt(2 * np.pi))

    np.testing.assert_allclose(got, [direct(r) for r in logits], atol=1e-9)


def test_contextual_oracle_matches_sampled_users():
    sim = contextual_sim(noise_std=1.0, satisfaction=0.5)
    panel = ["delta echo foxtrot?", "papa quebec zulu?"]
    rng, n = random.Random(11), 40_000
    clicks = [sim.sample("toy", "a", panel, rng).clicks for _ in range(n)]
    assert abs(np.mean([any(c) for c in clicks]) - sim.oracle_ctr("toy", "a", panel)) < 0.01
    assert any(sum(c) == 2 for c in clicks)  # an unsatisfied user scans on and may click again
    assert sum(not any(c) for c in clicks) / n > 0.25  # the abandoning quarter never clicks


def test_v1_settings_replay_the_v1_random_stream():
    """With every contextual switch off, sample() draws exactly what the first model drew."""
    sim = toy_sim()
    panel = ["delta echo foxtrot?", "golf hotel india?"]
    a_rng, b_rng = random.Random(3), random.Random(3)
    it = intent_distribution(sim.world["toy"], "a", sim.cfg.segments, sim.cfg.intents)
    for _ in range(500):
        got = sim.sample("toy", "a", panel, a_rng)
        seg = b_rng.choices(range(2), weights=it.segment_p)[0]
        f = b_rng.choices(range(2), weights=it.intent_p[seg])[0]
        want = sample_cascade(sim.attraction("toy", "a", panel)[f], sim.cfg.examination, b_rng)
        assert (got.clicks, got.intent) == (want, it.intents[f].id)


def test_world_links_are_checked(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text("topics:\n  - id: t\n    facets:\n"
                   "      - {id: a, kind: howto, popularity: 1, question: 'q?', answer: 'x', related: [zz]}\n"
                   "      - {id: b, kind: cost, popularity: 1, question: 'r?', answer: 'y'}\n")
    with pytest.raises(WorldError, match=r"w\.yaml.*related \['zz'\]"):
        load_world(str(bad))


def test_packaged_world_loads_for_both_models(world):
    v1 = load_world(domains=["travel"])
    assert v1 and all(t.domain == "travel" for t in v1.values()) and len(world) > len(v1)
