"""`grpo`: the algorithm's knobs (TRL's names, read by `clicks2pref.lit.grpo_module`) and the stage's own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from clicks2pref.config.checks import at_least, fraction, one_of, positive
from clicks2pref.config.collect import HeldOutConfig
from clicks2pref.models.registry import LoraConfig
from clicks2pref.objectives.grpo import LOSS_TYPES, SCALE_REWARDS

INITS = ("sft", "base")
LR_SCHEDULERS = ("constant", "linear")
IS_LEVELS = ("token", "sequence")


@dataclass
class GRPOConfig:
    """The algorithm's knobs (TRL names; see `clicks2pref.lit.grpo_module`)."""

    group_size: int = 4  # TRL num_generations: completions per prompt
    prompts_per_step: int = 4  # prompts per batch (TRL generation_batch_size = this × group_size)
    max_completion_length: int = 48
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    beta: float = 0.04  # KL coefficient
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None  # null = epsilon
    scale_rewards: str = "group"  # group | batch | none
    loss_type: str = "token"  # token | sequence | dr_grpo (TRL aliases accepted)
    num_iterations: int = 1  # optimiser steps per batch of samples (μ in the GRPO paper)
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    use_bias_correction_kl: bool = True
    mask_truncated_completions: bool = False  # completions without an end token get no loss
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"  # constant | linear (to 0 at the last step), after warmup_steps
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 8  # sequences per forward/backward
    lora: Optional[LoraConfig] = field(default_factory=lambda: LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    max_nonfinite_steps: int = 5
    log_completions_every: int = 4  # steps between sample-completion snapshots (0 = off)

    def __post_init__(self):
        at_least("group_size", self.group_size, 2, " (advantages are relative to the group)")
        for key in ("prompts_per_step", "max_completion_length", "num_iterations", "micro_batch_size",
                    "max_nonfinite_steps"):
            at_least(key, getattr(self, key), 1)
        for key in ("temperature", "learning_rate", "max_grad_norm"):
            positive(key, getattr(self, key))
        fraction("top_p", self.top_p, open_low=True)
        for key in ("top_k", "beta", "epsilon", "epsilon_high", "weight_decay", "warmup_steps",
                    "log_completions_every"):
            at_least(key, getattr(self, key), 0)
        one_of("loss_type", self.loss_type, LOSS_TYPES)
        one_of("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        one_of("importance_sampling_level", self.importance_sampling_level, IS_LEVELS)
        one_of("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)


@dataclass
class MonitorConfig:
    """The reward-hacking monitor's settings (`clicks2pref.eval.monitor.RewardHackingMonitor`)."""

    probe_contexts: int = 16  # fixed held-out (validation-split) contexts the monitor generates for
    eval_every: int = 4  # optimisation steps between evaluations (0 = off)
    patience: int = 2  # diverging evaluations in a row before the flag
    min_delta: float = 0.0  # change that counts as a rise / fall
    stop_on_flag: bool = False  # stop training when the flag is raised

    def __post_init__(self):
        at_least("probe_contexts", self.probe_contexts, 1)
        at_least("eval_every", self.eval_every, 0)
        at_least("patience", self.patience, 1)
        at_least("min_delta", self.min_delta, 0)


@dataclass
class GRPOEvalConfig(HeldOutConfig):
    gsb_margin: float = 0.02  # |CTR difference| within which a context counts as Same (SPEC eval.gsb.margin)

    def __post_init__(self):
        super().__post_init__()
        at_least("gsb_margin", self.gsb_margin, 0)


@dataclass
class RLLogsConfig:
    enabled: bool = True  # log a week of impressions from the GRPO policy (the Week 4-RFT OOD split)
    week: int = 4  # the week number written in the records
    # panels generated (each shown to collect.users_per_panel users); null = collect.sessions_per_week
    sessions: Optional[int] = None
    policy_name: str = "grpo"  # the records' `policy` field

    def __post_init__(self):
        at_least("week", self.week, 1)
        at_least("sessions", self.sessions, 1)


@dataclass
class GRPOStageConfig(GRPOConfig):
    init: str = "sft"  # sft = start from stage=sft's policy | base = policy.model as it is
    steps: int = 12  # batches of prompts (optimiser steps = steps × num_iterations)
    checkpoint_every_n_steps: int = 4  # Lightning checkpoint (adapters + optimiser) for resuming
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    rl_logs: RLLogsConfig = field(default_factory=RLLogsConfig)

    def __post_init__(self):
        super().__post_init__()
        one_of("init", self.init, INITS)
        at_least("steps", self.steps, 1)
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
