"""The click simulator: the oracle against hand computation and against sampled clicks."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from clicks2pref.config.simulator import AnsweredConfig, IntentConfig, QualityConfig, SegmentConfig, SimulatorConfig
from clicks2pref.data.simulator import ClickSimulator, split_contexts
from clicks2pref.data.simulator.similarity import LexicalSimilarity
from clicks2pref.data.simulator.click_model import ctr_given_logits, sample_clicks, sigmoid
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


@pytest.fixture(scope="module")
def v1_simulator():
    """The first user model (simulator=v1) with MiniLM, built once."""
    from omegaconf import OmegaConf

    from clicks2pref.config import compose_job
    from clicks2pref.data.simulator import build_simulator
    from tests.conftest import CONF_DIR

    return build_simulator(OmegaConf.to_object(compose_job(CONF_DIR, ["simulator=v1"]).simulator))


def ctr_test_panels(world: dict) -> tuple[str, str, dict[str, list[str]]]:
    """Panels of several kinds for one context of a topic both user models load: the intents' own questions,
    paraphrases, a repeat (penalised below its twin, so the CTR depends on the order), a follow-up, an
    off-topic and a malformed suggestion, a copy of the question just asked, two suggestions."""
    topic = next(t for t in world.values() if t.facets[0].follow_ups)
    current, other = topic.facets[0], topic.facets[1:]
    elsewhere = next(t for t in world.values() if t.id != topic.id).facets[1].question
    return topic.id, current.id, {
        "questions": [f.question for f in other[:3]],
        "paraphrases": [other[0].paraphrases[0], other[3].paraphrases[0], "Is it worth learning some of it first?"],
        "repeat": [other[1].question, other[1].question, other[2].question],
        "follow_up": [current.follow_ups[0].question, elsewhere, "### ??? !!!"],
        "copy": [current.question, other[4].paraphrases[-1], other[5].question],
        "two": [other[2].paraphrases[0], current.follow_ups[-1].question],
    }


@pytest.mark.parametrize("model", ["minilm_simulator", "v1_simulator"])
def test_sampled_ctr_matches_the_oracle_within_four_standard_errors(model, request):
    """The users `sample_users` draws click at the oracle's closed-form rate, panel by panel: as shown, and in
    a fresh random order per user (then the oracle's mean over the orders)."""
    sim = request.getfixturevalue(model)
    topic, facet, panels = ctr_test_panels(sim.world)
    rng, n = np.random.default_rng(0), 40_000
    for name, panel in panels.items():
        for shuffle in (False, True):
            orders = itertools.permutations(panel) if shuffle else [panel]
            oracle = float(np.mean([sim.oracle_ctr(topic, facet, list(o)) for o in orders]))
            sampled = sim.sample_users(topic, facet, panel, n, rng, shuffle).clicks.any(axis=1).mean()
            se = math.sqrt(oracle * (1 - oracle) / n)
            assert 0.01 < oracle < 0.99 and abs(sampled - oracle) < 4 * se, (name, shuffle, sampled, oracle, se)


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
    rng = np.random.default_rng(3)
    n_per_pos = 8000
    rates = []
    for k in range(len(e)):
        panel = filler[:k] + [target.question] + filler[k:][: len(e) - 1 - k]
        rates.append(sim.sample_users(topic.id, current.id, panel, n_per_pos, rng).clicks[:, k].mean())
    # The click rate at k is e_k x E[a(target)]; the ratio to position 1 is e_k / e_1.
    np.testing.assert_allclose(np.array(rates) / rates[0], np.array(e) / e[0], atol=0.04)
    # And the absolute curve, with the expected attraction the simulator itself assigns.
    it = intent_distribution(topic, current.id, sim.cfg.segments, sim.cfg.intents)
    a_bar = float(it.segment_p @ it.intent_p @ sim.attraction(topic.id, current.id, [target.question])[:, 0])
    np.testing.assert_allclose(np.array(rates) / a_bar, e, atol=0.03)


def test_cascade_stops_at_first_click():
    clicks = toy_sim().sample_users("toy", "a", ["delta echo foxtrot?", "golf hotel india?"], 2000,
                                    np.random.default_rng(0)).clicks
    assert clicks.sum(axis=1).max() == 1


def test_simulator_is_deterministic_given_seed(minilm_simulator):
    from clicks2pref.data.traffic import serve

    world = minilm_simulator.world
    topic = next(iter(world.values()))
    panel = [f.question for f in topic.facets[1:4]]
    draw = lambda seed: minilm_simulator.sample_users(topic.id, topic.facets[0].id, panel, 500,  # noqa: E731
                                                      np.random.default_rng(seed), shuffle=True)
    a, b, c = draw(5), draw(5), draw(6)
    for field in ("order", "clicks", "segment", "intent"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.order, c.order)
    contexts = [(t.id, t.facets[0].id) for t in list(world.values())[:3]]
    panels = [[f.question for f in world[t].facets[1:4]] for t, _ in contexts]
    logs = [serve(minilm_simulator, contexts, [[]] * 3, panels, "pi", 1, 50, True, random.Random(5))
            for _ in range(2)]
    assert logs[0] == logs[1] and sum(any(r["clicks"]) for r in logs[0][0]) > 0
    one = [minilm_simulator.sample(topic.id, topic.facets[0].id, panel, random.Random(5)) for _ in range(2)]
    assert one[0] == one[1]


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
    n = 40_000
    clicks = sim.sample_users("toy", "a", panel, n, np.random.default_rng(11)).clicks
    assert abs(clicks.any(axis=1).mean() - sim.oracle_ctr("toy", "a", panel)) < 0.01
    assert (clicks.sum(axis=1) == 2).any()  # an unsatisfied user scans on and may click again
    assert (clicks.sum(axis=1) == 0).mean() > 0.25  # the abandoning quarter never clicks


def test_users_are_drawn_from_the_segment_and_intent_distribution():
    """(segment, intent or none) frequencies against P(segment) × [P(f* | segment), abandonment]."""
    sim = contextual_sim(segments={"s1": SegmentConfig(3.0, {"cost": 2.0}, abandonment=0.1),
                                   "s2": SegmentConfig(1.0, {"safety": 3.0})})
    it, n = sim.intents("toy", "a"), 100_000
    users = sim.sample_users("toy", "a", ["delta echo foxtrot?"], n, np.random.default_rng(2))
    want = it.segment_p[:, None] * np.concatenate([it.intent_p, it.abandonment[:, None]], axis=1)
    got = np.zeros_like(want)
    np.add.at(got, (users.segment, np.where(users.intent < 0, len(it.intents), users.intent)), 1.0 / n)
    assert np.all(np.abs(got - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-12), (got, want)
    assert not users.clicks[users.intent < 0].any()  # no next intent: no click


def test_sampled_clicks_follow_examination_attraction_and_satisfaction():
    """P(click at 1) = e1 a1; P(click at 2) = e2 a2 (1 − e1 a1 s): after a click the user stops with
    probability s (the cascade at s = 1), else scans on."""
    e, a, n = [0.9, 0.6], np.array([0.5, 0.7]), 200_000
    for s in (1.0, 0.4):
        clicks = sample_clicks(np.tile(a, (n, 1)), e, s, np.random.default_rng(4))
        want = [e[0] * a[0], e[1] * a[1] * (1 - e[0] * a[0] * s)]
        np.testing.assert_allclose(clicks.mean(axis=0), want, atol=4 * 0.5 / math.sqrt(n))


def test_each_users_order_gets_its_own_duplicate_penalty():
    """Two copies of a suggestion: whichever one a user sees below its twin is the penalised one."""
    cfg = SimulatorConfig(examination=[1.0, 1.0, 1.0], alpha=4.0, beta=0.5, similarity="lexical",
                          **{**V1, "satisfaction": 0.0})  # every position examined, no stop: a click at k is a(s_k)
    sim = ClickSimulator(cfg, LexicalSimilarity(), toy_world())
    panel = ["delta echo foxtrot?", "delta echo foxtrot?", "golf hotel india?"]
    it = sim.intents("toy", "a")
    above, below = (it.segment_p @ it.intent_p) @ sim.attraction("toy", "a", panel)[:, :2]  # as given: 0 above 1
    users = sim.sample_users("toy", "a", panel, 50_000, np.random.default_rng(1), shuffle=True)
    where = users.order.argsort(axis=1)  # where[n, i]: the position user n saw suggestion i at
    clicked = users.clicks[np.arange(len(where)), where[:, 0]]
    first = where[:, 0] < where[:, 1]
    assert above > below + 0.5
    np.testing.assert_allclose([clicked[first].mean(), clicked[~first].mean()], [above, below], atol=0.01)


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
