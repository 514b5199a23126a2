"""The policy optimisers of `stage=grpo` by name (`optimizer=`): one LightningModule each, built the same way.

All share GRPOModule's sampler, the composite reward with its rule constraint, the reference (LoRA adapters
disabled) and checkpoints; the stage shares the monitor, checkpoint selection and the held-out evaluation.
"""
from __future__ import annotations

import math

from clicks2pref.config.optimizer import OptimizerConfig, method_config, steps
from clicks2pref.lit.dpo_module import ClickDPOModule, OnlineDPOModule
from clicks2pref.lit.grpo_module import GRPOModule
from clicks2pref.lit.rft import RFTModule

OPTIMIZERS = {"grpo": GRPOModule, "rft": RFTModule, "online_dpo": OnlineDPOModule, "dpo_clicks": ClickDPOModule}
NAMES = {"grpo": "GRPO", "rft": "RFT", "online_dpo": "Online DPO", "dpo_clicks": "DPO on clicks"}  # in reports
NEEDS_REFERENCE = ("online_dpo", "dpo_clicks")  # DPO's loss reads the reference even at grpo.beta = 0


def build_module(opt: OptimizerConfig, g, model, tokenizer, reward, k: int, reference=None):
    """The module that trains the policy for `steps(opt, g)` batches; `g` is the typed `grpo` config."""
    n, m = steps(opt, g), method_config(opt, g)
    if opt.name == "grpo":
        return GRPOModule(model, tokenizer, reward, m, k=k, reference_model=reference, total_steps=n * m.num_iterations)
    if opt.name == "rft":  # optimiser steps for a linear schedule: each round's kept targets, `epochs` times
        per_round = math.ceil(n / opt.rounds)
        rounds = math.ceil(n / per_round)
        total = rounds * opt.epochs * math.ceil(per_round * m.prompts_per_step * opt.top_n / opt.train_batch_size)
        return RFTModule(model, tokenizer, reward, m, opt, k=k, reference_model=reference, total_steps=total,
                         batches=n)
    return OPTIMIZERS[opt.name](model, tokenizer, reward, m, opt, k=k, reference_model=reference, total_steps=n)
