"""GRPO under `trainer=ddp_cpu` (two gloo processes) makes the update one process makes on the same samples.

Sampling is random per process by design, so the completions here are a fixed function of each prompt and
step (`FixedSamples`); everything after sampling runs as in training: log-probs, reference, rewards, group
advantages, the loss normalised over the global batch, DDP's gradient average and the optimiser step.
"""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy

from clicks2pref.config.grpo import GRPOConfig
from clicks2pref.lit.grpo_module import GRPOModule, PromptData
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.registry import LoraConfig
from clicks2pref.rewards.composite import CompositeReward
from tests.test_grpo_module import UppercaseRule, prompts, tiny


class FixedSamples(GRPOModule):
    """Completions drawn from a generator seeded by the prompt's tokens and the step, whatever the process."""

    def sample(self, messages, n, greedy=False):
        eos = self.tokenizer.eos_token_id
        unique = chat_inputs(self.tokenizer, messages)
        prompt_rows, completions, ended = [], [], []
        for p in unique:
            g = torch.Generator().manual_seed(sum(p) * 1000 + self.batches_seen)
            for _ in range(n):
                length = int(torch.randint(2, 7, (1,), generator=g))
                tokens = torch.randint(3, 200, (length,), generator=g).tolist()
                cut = bool(torch.rand((), generator=g) < 0.5)  # half end early: the token counts differ
                prompt_rows.append(p)
                completions.append(tokens[:-1] + [eos] if cut else tokens)
                ended.append(cut)
        return prompt_rows, completions, ended


def trained(world, loss_type: str, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    model, tok = tiny(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    cfg = GRPOConfig(group_size=2, prompts_per_step=4, max_completion_length=6, learning_rate=5e-3, beta=0.04,
                     loss_type=loss_type, micro_batch_size=4, log_completions_every=0)
    module = FixedSamples(model, tok, CompositeReward({"upper": UppercaseRule()}, {"upper": 1.0}), cfg)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, **({"accelerator": "cpu", "max_steps": 3} | trainer_kwargs))
    trainer.fit(module, datamodule=PromptData(prompts(world), cfg.prompts_per_step, 3, seed=0))
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("loss_type", ["token", "sequence"])
def test_ddp_cpu_update_matches_one_process(world, loss_type):
    one = trained(world, loss_type)
    two = trained(world, loss_type, devices=2,
                  strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo"))
    start = trained(world, loss_type, max_steps=0)
    update = max(float((one[n] - start[n]).abs().max()) for n in one)
    gap = max(float((one[n] - two[n]).abs().max()) for n in one)
    print(f"largest update {update:.2e}, largest gap {gap:.2e}")
    assert update > 1e-3  # three Adam steps moved the adapters
    assert gap < 1e-2 * update, (gap, update)
