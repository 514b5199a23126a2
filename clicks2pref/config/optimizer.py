"""`optimizer`: which method trains the policy in `stage=grpo`, its knobs (TRL's names) and the sample budget.

The stage, its artifact (`policy/`), the reward, the monitor, checkpoint selection and the held-out evaluation
are the same for every method; only what updates the policy changes. Sampler settings (max_completion_length,
temperature, top_p, top_k), LoRA, micro_batch_size, max_grad_norm and weight_decay come from `grpo`.

The budget is `policy_samples`, the completions a method generates for training; null = GRPO's own
(grpo.steps × grpo.prompts_per_step × grpo.group_size), so every method defaults to GRPO's budget.
`dpo_clicks` generates none: its budget counts the logged panels it trains on (two per pair).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import List, Optional

from clicks2pref.config.checks import at_least, one_of, positive
from clicks2pref.config.objectives import DPO_LABEL_SMOOTHED as LABEL_SMOOTHED, DPO_LOSS_TYPES as LOSS_TYPES
from clicks2pref.errors import ConfigError

OPTIMIZERS = ("grpo", "rft", "dpo_clicks", "online_dpo")
GROUP_BY = ("facet", "context")
EXAMINATION = ("item_fit", "none")


@dataclass
class OptimizerConfig:
    name: str = "grpo"  # grpo | rft | dpo_clicks | online_dpo
    policy_samples: Optional[int] = None  # completions generated for training; null = GRPO's budget
    # sampling and updates of the methods other than grpo (which reads grpo.*); null = grpo's value
    num_generations: Optional[int] = None  # completions per context [TRL num_generations]; null = grpo.group_size
    prompts_per_step: Optional[int] = None  # contexts (dpo_clicks: pairs) per step; null = grpo.prompts_per_step
    learning_rate: Optional[float] = None  # null = grpo.learning_rate
    # DPO (dpo_clicks, online_dpo), as TRL's DPOConfig
    beta: float = 0.1
    loss_type: str = "sigmoid"  # objectives.dpo.LOSS_TYPES
    label_smoothing: float = 0.0
    # rft: rejection-sampling fine-tuning / expert iteration
    rounds: int = 1  # sample → keep the best → fine-tune, repeated; each round samples from the latest policy
    top_n: int = 1  # completions kept per context, the highest composite rewards
    threshold: Optional[float] = None  # a kept completion's reward must reach it; null = no threshold
    epochs: int = 1  # passes over a round's kept completions
    train_batch_size: int = 8  # kept completions per SFT optimiser step [TRL per_device_train_batch_size]
    # dpo_clicks: pairs of logged panels of one context, more position-corrected clicks preferred
    weeks: Optional[List[int]] = field(default_factory=lambda: [1, 2, 3])  # the reward models' training weeks
    group_by: str = "facet"  # facet: logged (topic, facet) | context: the exact conversation
    min_impressions: int = 1  # a panel's impressions needed to enter a pair
    min_margin: float = 0.0  # clicks per expected examination by which chosen must beat rejected
    examination: str = "item_fit"  # item_fit: e_k fitted on the logs (objectives.click_model) | none: e_k = 1
    examination_steps: int = 500  # Adam steps of that fit

    def __post_init__(self):
        one_of("name", self.name, OPTIMIZERS)
        for key in ("policy_samples", "prompts_per_step", "rounds", "top_n", "epochs", "train_batch_size",
                    "min_impressions", "examination_steps"):
            at_least(key, getattr(self, key), 1)
        at_least("num_generations", self.num_generations, 2, " (a ranking needs two completions)")
        positive("learning_rate", self.learning_rate)
        positive("beta", self.beta)
        at_least("min_margin", self.min_margin, 0)
        one_of("loss_type", self.loss_type, LOSS_TYPES)
        if self.loss_type in LABEL_SMOOTHED:
            if not 0.0 <= self.label_smoothing < 0.5:
                raise ConfigError(f"{self.label_smoothing} must lie in [0, 0.5)", "label_smoothing")
        elif self.label_smoothing != 0.0:
            raise ConfigError(f"loss_type {self.loss_type} does not read it; set 0 or use one of "
                              f"{', '.join(LABEL_SMOOTHED)}", "label_smoothing")
        one_of("group_by", self.group_by, GROUP_BY)
        one_of("examination", self.examination, EXAMINATION)


def method_config(opt: OptimizerConfig, g):
    """`grpo`'s dataclass with the method's sampler and learning-rate knobs: what the shared module parts read."""
    if opt.name == "grpo":
        return g
    return replace(g, group_size=opt.num_generations or g.group_size,
                   prompts_per_step=opt.prompts_per_step or g.prompts_per_step,
                   learning_rate=opt.learning_rate or g.learning_rate, num_iterations=1)


def policy_samples(opt: OptimizerConfig, g) -> int:
    """The budget: completions generated for training (dpo_clicks: logged panels trained on)."""
    return opt.policy_samples or g.steps * g.prompts_per_step * g.group_size


def samples_per_step(opt: OptimizerConfig, g) -> int:
    """Completions one batch generates (dpo_clicks: logged panels one batch of pairs holds)."""
    m = method_config(opt, g)
    return m.prompts_per_step * (2 if opt.name == "dpo_clicks" else m.group_size)


def steps(opt: OptimizerConfig, g) -> int:
    """Batches of prompts (dpo_clicks: of pairs) that spend the budget, rounded up (rft: a batch per round at least)."""
    if opt.name == "grpo" and opt.policy_samples is None:
        return g.steps
    return max(math.ceil(policy_samples(opt, g) / samples_per_step(opt, g)), opt.rounds if opt.name == "rft" else 1)
