"""Reward components on hand-written panels: rules, panel weighting, τ calibration, diversity, composite."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clicks2pref.rewards.base import RewardBatch, RewardResources, panel_scores
from clicks2pref.rewards.composite import CompositeReward, build_components, needed_reward_models, resolve_weights
from clicks2pref.rewards.diversity import DiversityReward, distinct_n
from clicks2pref.rewards.ppl import PerplexityReward, calibrate_tau
from clicks2pref.rewards.rule import RuleReward
from tests.conftest import compose_config

CONTEXT = [{"role": "user", "content": "How do I store fresh basil?"},
           {"role": "assistant", "content": "Keep the stems in a glass of water at room temperature."}]
GOOD = ("1. Can I freeze basil leaves for later?\n2. How long does basil stay fresh in water?\n"
        "3. Which dishes use a lot of basil?")


def rule_scores(*texts, **kw):
    rule = RuleReward(**kw)
    batch = RewardBatch([CONTEXT] * len(texts), list(texts))
    return rule(batch).tolist(), rule.passes(batch).tolist(), rule.details(batch)


def test_rule_gives_a_clean_panel_the_top_score_and_passes_it():
    scores, passes, details = rule_scores(GOOD)
    assert scores == [1.0] and passes == [True]
    assert all(v == 1.0 for v in details[0].values())


@pytest.mark.parametrize("text, failed", [
    # bulleted instead of numbered: the strict format check fails, the suggestions are still read
    ("- Can I freeze basil leaves for later?\n- How long does basil stay fresh in water?\n- Which dishes use basil?",
     {"format"}),
    # two suggestions: format fails and the empty third position fails every per-position check
    ("1. Can I freeze basil leaves for later?\n2. How long does basil stay fresh in water?", {"format", "length",
                                                                                            "question", "duplicate",
                                                                                            "copy", "clean"}),
    # too short, not a question
    ("1. Basil.\n2. How long does basil stay fresh in water?\n3. Which dishes use a lot of basil?",
     {"length", "question"}),
    # a duplicate of the first suggestion
    ("1. Can I freeze basil leaves for later?\n2. Can I freeze basil leaves later?\n3. Which dishes use basil?",
     {"duplicate"}),
    # a copy of the user's question
    ("1. How do I store fresh basil?\n2. How long does basil stay fresh in water?\n3. Which dishes use basil?",
     {"copy"}),
    # garbage
    ("1. ?? 123 $$$ 456 ???\n2. How long does basil stay fresh in water?\n3. Which dishes use basil?", {"clean"}),
])
def test_rule_fails_exactly_the_broken_checks(text, failed):
    (score,), (passes,), (details,) = rule_scores(text)
    assert {c for c, v in details.items() if v < 1.0} == failed
    assert not passes and -1.0 <= score < 1.0


def test_rule_score_is_twice_the_weighted_share_minus_one():
    # format weight 2, five per-position checks weight 1 each; one of three positions too long
    long = "Can I freeze basil leaves for later and if so how should I wrap them in the freezer?"
    text = f"1. {long}\n2. How long does basil stay fresh in water?\n3. Which dishes use a lot of basil?"
    (score,), _, (details,) = rule_scores(text)
    assert details["length"] == pytest.approx(2 / 3)
    share = (2 * 1 + 2 / 3 + 1 + 1 + 1 + 1) / 7
    assert score == pytest.approx(2 * share - 1)


def test_rule_floors_unparseable_output():
    scores, passes, _ = rule_scores("", "I cannot help with that.", unparseable_score=-1.0)
    assert scores == [-1.0, -1.0] and passes == [False, False]


def test_rule_rejects_unknown_checks():
    with pytest.raises(ValueError, match="unknown checks"):
        RuleReward(check_weights={"format": 1.0, "politeness": 1.0})


def test_panel_scores_weigh_positions_by_examination_and_fill_empty_ones():
    e = [0.9, 0.6, 0.4]
    out = panel_scores([[1.0, 2.0, 3.0], [1.0], []], e, missing_score=-1.0).tolist()
    assert out[0] == pytest.approx((0.9 * 1 + 0.6 * 2 + 0.4 * 3) / 1.9)
    assert out[1] == pytest.approx((0.9 * 1 - 0.6 - 0.4) / 1.9)
    assert out[2] == pytest.approx(-1.0)


def test_tau_is_the_quantile_of_logged_log_ppl():
    values = torch.arange(1, 101, dtype=torch.float64)  # 1..100
    assert calibrate_tau(values, 0.95) == pytest.approx(95.05)
    assert calibrate_tau(torch.tensor([2.0, float("nan"), 4.0]), 0.5) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no finite"):
        calibrate_tau(torch.tensor([float("nan")]), 0.5)


def test_ppl_reward_penalises_only_beyond_tau_and_calibrates_through_the_reference():
    logged = {"1. a?\n2. b?\n3. c?": 1.0, "1. d?\n2. e?\n3. f?": 2.0, "1. g?\n2. h?\n3. i?": 3.0}
    calls = []

    def reference(contexts, completions):  # a stand-in reference scorer: log-PPL by text
        calls.append(len(completions))
        return torch.tensor([logged.get(c, 5.0) for c in completions], dtype=torch.float64)

    ppl = PerplexityReward(quantile=0.5)
    ppl.setup(RewardResources(reference=reference))
    assert ppl.calibrate([CONTEXT] * 3, list(logged)) == pytest.approx(2.0)
    batch = RewardBatch([CONTEXT] * 2, ["1. a?\n2. b?\n3. c?", "garbage"])
    assert ppl(batch).tolist() == pytest.approx([0.0, -3.0])
    # precomputed reference log-PPL (GRPO's path) is used as is, without calling the reference
    n_calls = len(calls)
    given = RewardBatch([CONTEXT] * 2, ["x", "y"], ref_log_ppl=torch.tensor([1.5, 2.5]))
    assert ppl(given).tolist() == pytest.approx([0.0, -0.5]) and len(calls) == n_calls


def test_reference_scorer_is_the_mean_token_nll_of_the_completion(tmp_path):
    from clicks2pref.config.prompt import PromptTemplate
    from clicks2pref.data.prompts import build_messages
    from clicks2pref.models.generate import chat_inputs
    from clicks2pref.models.registry import ModelConfig, load_causal_lm
    from clicks2pref.rewards.ppl import ReferenceScorer

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), str(Path.home() / ".cache/clicks2pref"), seed=0)
    template = PromptTemplate()
    scorer = ReferenceScorer(model, tok, template, batch_size=2)
    texts = [GOOD, "1. Why?", "1. Where can I buy basil seeds in winter?\n2. Is dried basil as good?"]
    got = scorer([CONTEXT] * 3, texts)
    for text, value in zip(texts, got):  # one at a time, no padding, by hand
        prompt = chat_inputs(tok, [build_messages(template, CONTEXT)])[0]
        target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        nll = -sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(target)) / len(target)
        assert value.item() == pytest.approx(nll, rel=1e-4)


def test_reference_scorer_shares_each_prompt_skips_repeats_and_matches_the_full_pass():
    """Best-of-n's perplexity pass: n completions per conversation, some repeated. Each conversation's prompt runs
    once per batch, a repeated (conversation, completion) once, and the values are the one-row-per-completion full
    pass's to 1e-5."""
    from clicks2pref.config.prompt import PromptTemplate
    from clicks2pref.models.registry import ModelConfig, load_causal_lm
    from clicks2pref.rewards.ppl import ReferenceScorer

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), str(Path.home() / ".cache/clicks2pref"), seed=0)
    contexts = [[{"role": "user", "content": f"How do I store fresh {plant}?"},
                 {"role": "assistant", "content": "Keep the stems in water. " * (i + 1)}]
                for i, plant in enumerate(["basil", "mint", "parsley"])]
    texts = [GOOD, "1. Why?", "1. Where can I buy seeds in winter?\n2. Is dried as good?", "1. a\n2. b\n3. c"]
    rows = [(c, texts[(i + j) % 4]) for i, c in enumerate(contexts) for j in range(5)]  # 5 per context, 1 repeated
    rows.append((contexts[0], GOOD))  # and a repeat away from its group
    scorer = ReferenceScorer(model, tok, PromptTemplate(), temperature=0.7, batch_size=4)
    seen = []
    hook = model.model.register_forward_pre_hook(lambda _, args, kw: seen.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)
    try:
        got = scorer([c for c, _ in rows], [t for _, t in rows])
    finally:
        hook.remove()
    expected = scorer.full_pass([c for c, _ in rows], [t for _, t in rows])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got[0] == got[4] == got[-1]  # the repeats take their first's value
    passes = [seen[i:i + 2] for i in range(0, len(seen), 2)]  # (prompts, completions) per batch
    assert sum(p[0][0] for p in passes) == 3  # each conversation's prompt once
    assert sum(p[1][0] for p in passes) == 12  # 4 distinct completions of each of the 3 conversations


def test_diversity_is_one_minus_the_max_pairwise_similarity():
    div = DiversityReward(embedder="lexical", single_score=0.0)
    batch = RewardBatch([CONTEXT] * 3, [
        "1. freeze basil leaves?\n2. basil stay fresh water?\n3. dishes lots basil?",
        "1. freeze basil leaves?\n2. freeze basil leaves?\n3. dishes basil?",
        "1. freeze basil leaves?"])
    scores = div(batch).tolist()
    # content words: {freeze, basil, leaves}, {basil, stay, fresh, water}, {dishes, lots, basil}: max Jaccard 1/5
    assert scores[0] == pytest.approx(1 - 1 / 5)
    assert scores[1] == pytest.approx(0.0)
    assert scores[2] == 0.0
    assert distinct_n([["a b c", "a b d"]], 2) == pytest.approx(3 / 4)


class FakeRM:
    """A stand-in trained reward model: μ = number of words / 10, σ = 0.5 for questions else 2."""

    kind = "garm"
    examination = [0.9, 0.6, 0.4]  # as learned by a click-model fit

    def __init__(self):
        self.calls = 0

    def score(self, contexts, suggestions, batch_size=32):
        self.calls += len(suggestions)
        mu = torch.tensor([len(s.split()) / 10 for s in suggestions], dtype=torch.float64)
        sigma = torch.tensor([0.5 if s.endswith("?") else 2.0 for s in suggestions], dtype=torch.float64)
        return {"reward": mu} if self.kind == "btrm" else {"mu": mu, "sigma": sigma}


def test_composite_builds_from_the_real_config_and_weights_components(tmp_path):
    cfg = compose_config(["stage=grpo", "rewards=no_external", "rewards.embedder=lexical", "rewards.ppl.tau=2.0",
                          "rewards.weights=config", "rewards.rule.weight=0.5", "rewards.panel=mean"], tmp_path)
    assert needed_reward_models(cfg.rewards) == ["garm"]
    rm = FakeRM()
    resources = RewardResources({"garm": rm}, reference=lambda c, t: torch.full((len(t),), 3.0, dtype=torch.float64))
    components = build_components(cfg.rewards, resources)
    assert list(components) == ["garm", "rule", "ppl", "diversity"]
    weights = resolve_weights(cfg.rewards, list(components))
    assert weights == {"garm": 1.0, "rule": 0.5, "ppl": 1.0, "diversity": 1.0}
    reward = CompositeReward(components, weights)
    batch = RewardBatch([CONTEXT] * 2, [GOOD, GOOD])
    total, parts = reward(batch)
    mu = [len(s.split()) / 10 for s in batch.panels[0]]
    garm = sum(e * (m - 0.5) for e, m in zip([0.9, 0.6, 0.4], mu)) / 1.9
    assert parts["garm"][0].item() == pytest.approx(garm)
    assert parts["rule"][0].item() == 1.0 and parts["ppl"][0].item() == pytest.approx(-1.0)
    expected = garm + 0.5 * 1.0 - 1.0 + parts["diversity"][0].item()
    assert total.tolist() == pytest.approx([expected, expected])
    assert rm.calls == 3  # each distinct (context, suggestion) is scored once


def test_garm_click_panel_is_the_probability_of_any_click_under_the_models_examination(tmp_path):
    import math

    cfg = compose_config(["stage=grpo", "rewards=no_external", "rewards.embedder=lexical", "rewards.ppl.tau=2.0"],
                         tmp_path)
    assert cfg.rewards.panel == "click" and cfg.rewards.examination is None
    rm = FakeRM()
    rm.examination = [1.0, 0.5, 0.25]
    components = build_components(cfg.rewards, RewardResources({"garm": rm}, reference=lambda c, t: torch.zeros(len(t))))
    assert components["garm"].examination == [1.0, 0.5, 0.25]
    batch = RewardBatch([CONTEXT], [GOOD])
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    a = [phi((len(s.split()) / 10 - 0.5) / math.sqrt(1 + 0.25)) for s in batch.panels[0]]  # κ = 1, σ = 0.5
    expected = 1 - (1 - a[0]) * (1 - 0.5 * a[1]) * (1 - 0.25 * a[2])
    assert components["garm"](batch).item() == pytest.approx(expected)


def test_garm_click_panel_applies_the_models_redundancy_term_to_a_near_repeat(tmp_path):
    import math

    from clicks2pref.objectives.click_model import redundancy_discount
    from clicks2pref.rewards.rule import overlap

    cfg = compose_config(["stage=grpo", "rewards=no_external", "rewards.embedder=lexical", "rewards.ppl.tau=2.0"],
                         tmp_path)
    assert cfg.rewards.redundancy is True
    rm = FakeRM()
    rm.examination = [1.0, 1.0, 1.0]
    rm.redundancy = {"embedder": "lexical", "weight": 20.0, "threshold": 0.5}
    repeat = "1. Can I freeze basil leaves?\n2. Can I freeze basil leaves whole?\n3. Why does basil turn black?"
    batch = RewardBatch([CONTEXT], [repeat])
    p = batch.panels[0]
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    a = [phi((len(s.split()) / 10 - 0.5) / math.sqrt(1 + 0.25)) for s in p]  # κ = 1, σ = 0.5
    above = [max(overlap(p[k], p[j]) for j in range(k)) for k in (1, 2)]
    g = [1.0] + [redundancy_discount(torch.tensor(x), 20.0, 0.5).item() for x in above]
    assert above[0] > 0.5 > above[1] and g[1] < 0.2 < 0.9 < g[2]  # the second repeats the first, the third does not
    expected = 1 - math.prod(1 - gk * ak for gk, ak in zip(g, a))
    on = build_components(cfg.rewards, RewardResources({"garm": rm}, reference=lambda c, t: torch.zeros(len(t))))
    assert on["garm"](batch).item() == pytest.approx(expected)
    off_cfg = compose_config(["stage=grpo", "rewards=no_external", "rewards.embedder=lexical", "rewards.ppl.tau=2.0",
                              "rewards.redundancy=false"], tmp_path)
    off = build_components(off_cfg.rewards, RewardResources({"garm": rm}, reference=lambda c, t: torch.zeros(len(t))))
    assert off["garm"](batch).item() == pytest.approx(1 - math.prod(1 - ak for ak in a))


def test_resolve_weights_equal_and_fusion(tmp_path):
    from clicks2pref.errors import ConfigError

    cfg = compose_config(["stage=grpo", "rewards=no_fusion"], tmp_path)
    names = ["garm", "external", "rule", "ppl", "diversity"]
    assert resolve_weights(cfg.rewards, names) == {n: 0.2 for n in names}
    cfg = compose_config(["stage=grpo"], tmp_path)
    fused = {n: w for n, w in zip(names, [0.4, 0.1, 0.2, 0.2, 0.1])}
    assert resolve_weights(cfg.rewards, names, fused) == fused
    with pytest.raises(ConfigError, match="stage=fusion"):
        resolve_weights(cfg.rewards, names, None)


def test_btrm_preset_shares_one_btrm_between_btrm_and_external(tmp_path):
    cfg = compose_config(["stage=grpo", "rewards=btrm_instead_of_garm", "rewards.embedder=lexical",
                          "rewards.ppl.tau=1.0"], tmp_path)
    assert needed_reward_models(cfg.rewards) == ["btrm"]
    rm = FakeRM()
    rm.kind = "btrm"
    components = build_components(cfg.rewards, RewardResources({"btrm": rm}, reference=lambda c, t: torch.zeros(len(t))))
    batch = RewardBatch([CONTEXT], [GOOD])
    b, e = components["btrm"](batch), components["external"](batch)
    assert b.tolist() == pytest.approx(e.tolist()) and rm.calls == 3


def test_garm_components_at_every_kappa_share_one_pass_of_the_model(tmp_path):
    """Fusion builds GaRM at each κ of its grid: the model's outputs are cached before κ is applied."""
    from omegaconf import OmegaConf

    from clicks2pref.rewards.composite import build_component

    cfg = compose_config(["stage=grpo", "rewards=no_external", "rewards.embedder=lexical", "rewards.ppl.tau=2.0",
                          "rewards.panel=mean"], tmp_path)
    rm = FakeRM()
    resources = RewardResources({"garm": rm}, reference=lambda c, t: torch.zeros(len(t)))
    batch = RewardBatch([CONTEXT], [GOOD])
    mu = [len(s.split()) / 10 for s in batch.panels[0]]
    sigma = [0.5 if s.endswith("?") else 2.0 for s in batch.panels[0]]
    for kappa in (0.0, 0.5, 1.0):
        garm = build_component(OmegaConf.merge(cfg.rewards, {"garm": {"kappa": kappa}}), "garm", resources)
        expected = sum(e * (m - kappa * s) for e, m, s in zip([0.9, 0.6, 0.4], mu, sigma)) / 1.9
        assert garm(batch).item() == pytest.approx(expected)
    assert rm.calls == 3


def test_missing_reward_model_is_a_config_error():
    from clicks2pref.errors import ConfigError
    from clicks2pref.rewards.garm import GaRMReward

    with pytest.raises(ConfigError, match="stage=rm"):
        GaRMReward().setup(RewardResources({}))
    assert math.isfinite(1.0)


def test_shared_prefix_scoring_equals_the_reward_models_own(tmp_path):
    from clicks2pref.models.registry import ModelConfig
    from clicks2pref.models.reward_heads import HeadConfig, build_reward_model
    from clicks2pref.models.shared_prefix import rm_rewards, supports_shared_prefix

    other = [{"role": "user", "content": "Is it safe to eat raw cookie dough?"},
             {"role": "assistant", "content": "Raw flour and eggs can carry bacteria, so it is safer to bake it."}]
    suggestions = ["Can I freeze basil leaves for later?", "Why?", "How long does basil stay fresh in water?",
                   "Which cookie doughs are safe to eat raw?", "What temperature kills salmonella?"]
    contexts = [CONTEXT, CONTEXT, CONTEXT, other, other]
    for kind in ("garm", "btrm"):
        rm = build_reward_model(kind, ModelConfig(name="tiny-llama"), HeadConfig(init_std=0.5, max_length=128),
                                str(Path.home() / ".cache/clicks2pref"), seed=0)
        assert supports_shared_prefix(rm)
        expected = rm.rewards(contexts, suggestions, kappa=1.0)
        got = rm_rewards(rm, contexts, suggestions, kappa=1.0, batch_size=2)
        torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)
        rm.cfg.max_length = 60  # too short for these conversations: falls back to the model's own truncation
        torch.testing.assert_close(rm_rewards(rm, contexts, suggestions, kappa=1.0),
                                   rm.rewards(contexts, suggestions, kappa=1.0).float(), rtol=1e-4, atol=1e-5)


def test_cached_outputs_score_each_distinct_suggestion_once_in_input_order(monkeypatch):
    from clicks2pref.models.registry import ModelConfig
    from clicks2pref.models.reward_heads import HeadConfig, build_reward_model
    from clicks2pref.models import shared_prefix

    rm = build_reward_model("garm", ModelConfig(name="tiny-llama"), HeadConfig(init_std=0.5, max_length=128),
                            str(Path.home() / ".cache/clicks2pref"), seed=0)
    suggestions = ["Can I freeze basil leaves for later?", "Why?", "How long does basil stay fresh in water?"]
    expected = rm.score([CONTEXT] * 3, suggestions)
    scored = []
    real = shared_prefix.rm_outputs
    monkeypatch.setattr(shared_prefix, "rm_outputs",
                        lambda m, c, s, batch_size: scored.extend(s) or real(m, c, s, batch_size))
    score = shared_prefix.cached_outputs(rm, batch_size=2)
    first = score([CONTEXT] * 2, suggestions[:2])
    again = score([CONTEXT] * 4, [suggestions[1], suggestions[2], suggestions[0], suggestions[1]])
    assert scored == suggestions  # the third once, the first two not again
    for name in ("mu", "sigma"):
        torch.testing.assert_close(first[name], expected[name][:2], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(again[name], expected[name][[1, 2, 0, 1]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("override", ["rewards.garm.kapa=1", "grpo.group_sise=4", "fusion.C=big",
                                      "rewards=no_such_preset", "grpo.monitor.patience=two", "rewards.rule.min_words=2.5"])
def test_typos_in_the_reward_grpo_and_fusion_groups_fail_at_composition(tmp_path, override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(["stage=grpo", override], tmp_path)


def test_rule_constraint_puts_failing_panels_at_the_bottom_of_their_group():
    from clicks2pref.rewards.composite import group_floor

    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    total = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0], dtype=torch.float64)
    passes = torch.tensor([False, True, True, False, False])
    assert group_floor(total, passes, [a, a, a, b, b]).tolist() == [1.0, 1.0, 2.0, 4.0, 4.0]
    # below: under every passing panel, the failing ones in their own order (b: 5 > 4 stays 4 > 3)
    assert group_floor(total, passes, [a, a, a, b, b], "below").tolist() == [1.0, 1.0, 2.0, 4.0, 3.0]
