"""`grpo`: the algorithm's knobs (TRL's names, read by `clicks2pref.lit.grpo_module`) and the stage's own."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Collection, Optional

from clicks2pref.config.checks import at_least, fraction, one_of, positive
from clicks2pref.config.collect import HeldOutConfig
from clicks2pref.config.model import LoraConfig
from clicks2pref.config.objectives import GRPO_LOSS_TYPES as LOSS_TYPES, GRPO_SCALE_REWARDS as SCALE_REWARDS
from clicks2pref.errors import ConfigError

INITS = ("sft", "base")
LR_SCHEDULERS = ("constant", "linear")
IS_LEVELS = ("token", "sequence")

# TRL GRPOConfig names accepted beside ours (`grpo.num_generations=8` is `grpo.group_size=8`; every other knob
# has TRL's name already): alias -> (our key, the key TRL's count is a multiple of, or None). Each alias is a
# null field; a set one is moved onto our key by `move_trl_aliases`.
TRL_ALIASES = {
    "num_generations": ("group_size", None),
    "lr_scheduler_type": ("lr_scheduler", None),
    "per_device_train_batch_size": ("micro_batch_size", None),  # on one device: sequences per forward/backward
    "generation_batch_size": ("prompts_per_step", "group_size"),  # completions per batch = prompts × group_size
    "max_steps": ("steps", "num_iterations"),  # optimiser steps = batches × num_iterations
}


def move_trl_aliases(node, explicit: Collection[str] = (), prefix: str = "") -> None:
    """Move each set TRL alias of `node` (a GRPO dataclass or the composed `grpo` node) onto our key; null it.

    `explicit` names our keys the user set as well: a different value there is a conflict. Raises ConfigError
    naming both keys, or when a TRL count is not a whole multiple of the key it is divided by.
    """
    for alias, (ours, per) in TRL_ALIASES.items():
        given = getattr(node, alias, None)
        if given is None:
            continue
        value = given
        if per is not None:
            unit = getattr(node, per)
            if unit < 1 or given % unit:
                raise ConfigError(f"{given} is not a whole multiple of {prefix}{per}={unit} (TRL's {alias} = "
                                  f"{ours} × {per}); set {prefix}{ours} instead", f"{prefix}{alias}")
            value = given // unit
        if ours in explicit and getattr(node, ours) != value:
            raise ConfigError(f"{given} disagrees with {prefix}{ours}={getattr(node, ours)} ({alias} is TRL's name "
                              f"for {ours}{f' × {per}' if per else ''}); set only one of them", f"{prefix}{alias}")
        setattr(node, ours, value)
        setattr(node, alias, None)


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
    use_vllm: bool = False  # rollouts on a vLLM engine colocated on the training GPU (models.vllm_rollout)
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM takes (weights + KV cache)
    vllm_max_model_length: Optional[int] = None  # engine context length; null = the model's
    # TRL's names, null unless set; a set one replaces our key (TRL_ALIASES)
    num_generations: Optional[int] = None  # = group_size
    lr_scheduler_type: Optional[str] = None  # = lr_scheduler
    per_device_train_batch_size: Optional[int] = None  # = micro_batch_size
    generation_batch_size: Optional[int] = None  # = prompts_per_step × group_size

    def __post_init__(self):
        # built directly (not from a composed config, whose aliases `validate` moved already): a key of ours
        # that differs from its default counts as set
        defaults = {f.name: f.default for f in fields(self)}
        move_trl_aliases(self, [ours for alias, (ours, _) in TRL_ALIASES.items()
                                if hasattr(self, alias) and getattr(self, ours) != defaults[ours]])
        at_least("group_size", self.group_size, 2, " (advantages are relative to the group)")
        for key in ("prompts_per_step", "max_completion_length", "num_iterations", "micro_batch_size",
                    "max_nonfinite_steps"):
            at_least(key, getattr(self, key), 1)
        for key in ("temperature", "learning_rate", "max_grad_norm"):
            positive(key, getattr(self, key))
        fraction("top_p", self.top_p, open_low=True)
        fraction("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, open_low=True)
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

    probe_contexts: int = 32  # fixed held-out (validation-split) contexts the monitor generates for
    eval_every: int = 4  # optimisation steps between evaluations (0 = off)
    patience: int = 2  # diverging evaluations in a row before the flag
    min_delta: float = 0.0  # change that counts as a rise / fall
    stop_on_flag: bool = False  # stop training when the flag is raised
    select: str = "sampled_clicks"  # sampled_clicks: keep the evaluation with the most sampled clicks | last
    users_per_probe: int = 512  # simulated users each probe panel is shown to (select=sampled_clicks)

    def __post_init__(self):
        at_least("probe_contexts", self.probe_contexts, 1)
        one_of("select", self.select, ("sampled_clicks", "last"))
        at_least("users_per_probe", self.users_per_probe, 1)
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
    seed: Optional[int] = None  # training seed (adapter init, prompt order, sampling); null = the global `seed`.
    # The probe contexts, their users and the evaluation keep the global seed, so training seeds are paired and
    # reuse every upstream artifact
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    rl_logs: RLLogsConfig = field(default_factory=RLLogsConfig)
    max_steps: Optional[int] = None  # TRL's name: = steps × num_iterations (null unless set)

    def __post_init__(self):
        super().__post_init__()
        one_of("init", self.init, INITS)
        at_least("steps", self.steps, 1)
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
