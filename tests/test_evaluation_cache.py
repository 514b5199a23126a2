"""A policy's evaluation panels: panel j of a context is the same however many panels an evaluation asks for, so
the cache keeps the columns drawn and samples only the missing ones."""
from __future__ import annotations

from omegaconf import OmegaConf, open_dict

from clicks2pref.data.simulator import build_simulator
from clicks2pref.eval.heldout import heldout_contexts
from clicks2pref.eval.policy import cached_evaluation, evaluate_policy
from clicks2pref.models.registry import ModelConfig, load_causal_lm


def test_a_longer_evaluation_extends_the_cached_columns(cfg_smoke):
    cfg = cfg_smoke
    with open_dict(cfg):
        cfg.policy.generation.max_new_tokens = 8
    sim = build_simulator(OmegaConf.to_object(cfg.simulator))
    contexts = heldout_contexts(cfg, sim, cfg.eval)[:3]
    template = cfg.prompt[sorted(cfg.prompt)[0]]
    model = load_causal_lm(ModelConfig(name="tiny-llama"), cfg.paths.model_cache, seed=0)
    loads = []

    def load():
        loads.append(1)
        return model

    def evaluation(k):
        return cached_evaluation(cfg, "tiny", load, template, sim, "test", contexts, k)

    one = evaluation(1)
    three = evaluation(3)
    assert len(loads) == 2 and three["samples_per_context"] == 3  # the second call sampled columns 1 and 2 only
    assert [s[0] for s in three["samples"]] == one["outputs"] == [s[0] for s in one["samples"]]
    assert [c[0] for c in three["sample_ctr"]] == [c[0] for c in one["sample_ctr"]]
    two = evaluation(2)
    assert len(loads) == 2  # fewer panels than kept: the first ones, nothing sampled
    assert two["samples"] == [s[:2] for s in three["samples"]] and two["samples_per_context"] == 2
    assert two["per_context_ctr"] == [sum(c[:2]) / 2 for c in three["sample_ctr"]]
    # the extended evaluation is the one a single 3-panel run draws, at any generation batch size
    with open_dict(cfg):
        cfg.policy.generation.batch_size = 1
    direct = evaluate_policy(*model, template, sim, contexts, OmegaConf.to_object(cfg.policy.generation), cfg.seed, 3)
    assert direct["samples"] == three["samples"] and direct["sample_ctr"] == three["sample_ctr"]
    assert direct["format_rate"] == three["format_rate"]
