"""The GRPO LightningModule on a tiny random Llama: it learns a simple rule reward, its micro-batched loss is
the objectives module's full-batch loss (so TRL parity carries over), and with LoRA the reference is the
same weights with the adapters disabled."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch

from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.data.prompts import build_messages
from clicks2pref.lit.grpo_module import GRPOModule, prompt_loader
from clicks2pref.models.registry import LoraConfig, ModelConfig, apply_training_options, load_causal_lm
from clicks2pref.objectives.grpo import grpo_loss
from clicks2pref.rewards.composite import CompositeReward
from clicks2pref.models.logprobs import completion_logps, pad_prompt_completion
from clicks2pref.config.grpo import GRPOConfig

CACHE = "~/.cache/clicks2pref"


class UppercaseRule:
    """A simple rule a random model can learn: the share of letters that are upper case."""

    def setup(self, resources):
        pass

    def __call__(self, batch):
        return torch.tensor([sum(c.isupper() for c in t) / max(sum(c.isalpha() for c in t), 1)
                             for t in batch.completions], dtype=torch.float64)


def prompts(world, n=10):
    from clicks2pref.data.simulator.world import context_messages

    contexts = [context_messages(t, f, None) for t in list(world.values())[:n // 2] for f in t.facets[:2]]
    return [{"messages": build_messages(PromptTemplate(), c), "context": c} for c in contexts]


def tiny(lora: LoraConfig | None = None):
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), CACHE, seed=0)
    if lora is not None:
        model = apply_training_options(model, ModelConfig(name="tiny-llama", lora=lora))
    return model, tok


class Rewards(pl.Callback):
    def __init__(self):
        self.history, self.metrics = [], []

    def on_train_batch_end(self, trainer, *args):
        self.history.append(float(trainer.callback_metrics["grpo/reward"]))
        self.metrics.append(set(trainer.callback_metrics))


def fit(module, items, steps, callbacks=()):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps * module.cfg.num_iterations, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=list(callbacks))
    trainer.fit(module, prompt_loader(items, module.cfg.prompts_per_step, steps, seed=0))
    return trainer


def test_grpo_raises_a_simple_rule_reward_in_20_steps(world):
    pl.seed_everything(0)
    model, tok = tiny()
    # top_k keeps a random model's choices few enough for 20 steps to matter
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, max_completion_length=6, top_k=10, learning_rate=1e-2,
                     beta=0.0, lora=None, micro_batch_size=8, log_completions_every=0)
    module = GRPOModule(model, tok, CompositeReward({"upper": UppercaseRule()}, {"upper": 1.0}), cfg)
    cb = Rewards()
    fit(module, prompts(world), 20, [cb])
    first, last = sum(cb.history[:5]) / 5, sum(cb.history[-5:]) / 5
    # 0.23 to 0.9 over 20 steps in six runs (three seeds; this sampler and transformers' multinomial)
    assert len(cb.history) == 20 and last > first + 0.2, cb.history


def test_a_step_whose_gradients_are_not_finite_is_skipped_and_counted(world):
    """A finite GRPO loss whose backward yields one NaN gradient: the step is dropped, not taken."""
    from tests.conftest import nan_gradient_on_call

    pl.seed_everything(0)
    model, tok = tiny()
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, max_completion_length=6, top_k=10, learning_rate=1e-2,
                     beta=0.0, lora=None, micro_batch_size=8, log_completions_every=0)
    module = GRPOModule(model, tok, CompositeReward({"upper": UppercaseRule()}, {"upper": 1.0}), cfg)
    calls = nan_gradient_on_call(model.model.norm.weight, 2)
    before = model.model.norm.weight.detach().clone()
    fit(module, prompts(world), 3)
    assert len(calls) == 4 and module.nonfinite_total == 1  # a skipped step is not a step: a fourth batch runs
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.model.norm.weight, before)


def _batch(module, world, n=8, seed=0):
    torch.manual_seed(seed)
    items = prompts(world)[: n // module.cfg.group_size]
    p, c, _ = module.sample([i["messages"] for i in items], module.cfg.group_size)
    return pad_prompt_completion(p, c, module.tokenizer.pad_token_id)


@pytest.mark.parametrize("loss_type", ["token", "sequence", "dr_grpo"])
def test_micro_batched_backward_equals_the_full_batch_objective(world, loss_type):
    model, tok = tiny()
    cfg = GRPOConfig(group_size=4, max_completion_length=6, lora=None, micro_batch_size=3, loss_type=loss_type,
                     beta=0.1, epsilon_high=0.28)
    module = GRPOModule(model, tok, None, cfg)
    ids, attention, mask = _batch(module, world)
    mask[0, 3:] = 0  # uneven lengths
    n = mask.shape[1]
    with torch.no_grad():
        ref = completion_logps(model, ids, attention, n)[0] + 0.05 * torch.randn(ids.shape[0], n)
        old = completion_logps(model, ids, attention, n)[0] + 0.1 * torch.randn(ids.shape[0], n)
    adv = torch.randn(ids.shape[0])
    loss, logps, _ = module.backward_loss(ids, attention, mask, old, ref, adv)
    micro = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full, _ = grpo_loss(completion_logps(model, ids, attention, n, cfg.temperature)[0], old, ref, adv, mask, beta=0.1,
                        epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=6)
    full.backward()
    assert loss == pytest.approx(full.item(), rel=1e-5, abs=1e-7)
    for a, p in zip(micro, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-7)


def test_lora_reference_is_the_base_with_adapters_disabled_and_training_logs_trl_metrics(world, tmp_path):
    base, tok = tiny()
    frozen = copy.deepcopy(base)
    model = apply_training_options(base, ModelConfig(name="tiny-llama", lora=LoraConfig(r=4, lora_alpha=8,
                                                                                         lora_dropout=0.0)))
    for name, p in model.named_parameters():  # make the adapters matter from the start
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, max_completion_length=6, top_k=10, beta=0.04,
                     num_iterations=2, micro_batch_size=4, log_completions_every=1, learning_rate=1e-2)
    module = GRPOModule(model, tok, CompositeReward({"upper": UppercaseRule()}, {"upper": 1.0}), cfg)
    assert module.reference_model is None  # no second copy of the weights
    ids, attention, mask = _batch(module, world, n=4)
    n = mask.shape[1]
    with torch.no_grad():
        expected = completion_logps(frozen, ids, attention, n, cfg.temperature)[0]
        policy = completion_logps(model, ids, attention, n, cfg.temperature)[0]
    ref = module.reference_logps(ids, attention, n)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-3
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in frozen.parameters()) / 10

    cb = Rewards()
    trainer = fit(module, prompts(world), 2, [cb])
    assert trainer.global_step == 4  # num_iterations optimiser steps per batch
    for name in ("grpo/reward", "grpo/reward_std", "grpo/rewards/upper/mean", "grpo/kl", "grpo/clip_ratio",
                 "grpo/entropy", "grpo/completion_len", "grpo/frac_zero_std", "grpo/loss", "grpo/grad_norm"):
        assert name in cb.metrics[-1], name
    assert len(module.samples) == 4 and {"step", "question", "completion", "reward", "upper"} <= set(module.samples[0])
    # the base weights never moved: the reference is still the frozen model
    torch.testing.assert_close(module.reference_logps(ids, attention, n), expected, rtol=1e-5, atol=1e-5)
