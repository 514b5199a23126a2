"""`collect` and `eval`: the logging rounds of stage 1 and the side-by-side evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from clicks2pref.config.checks import at_least, fraction, one_of
from clicks2pref.errors import ConfigError
from clicks2pref.models.registry import ModelConfig

SPLITS = ("test", "val")  # held-out context splits of the simulator (never in any log)


@dataclass
class CollectConfig:
    contexts_per_template: int = 40
    weeks: int = 4
    sessions_per_week: int = 60
    users_per_panel: int = 24
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    policy_name: Optional[str] = None  # the logs' `policy` field; null = prompt_<template>
    model: Optional[ModelConfig] = None  # the model serving the logged traffic; null = policy.model

    def __post_init__(self):
        for key in ("contexts_per_template", "weeks", "sessions_per_week", "users_per_panel", "bootstrap_samples"):
            at_least(key, getattr(self, key), 1)
        fraction("ci_level", self.ci_level, open_low=True, open_high=True)


@dataclass
class GSBConfig:
    margin: float = 0.02  # |oracle CTR difference| within which a context counts as Same

    def __post_init__(self):
        at_least("margin", self.margin, 0)


@dataclass
class HeldOutConfig:
    """The held-out comparison every stage that evaluates a policy shares (`clicks2pref.eval.heldout`)."""

    split: str = "test"  # test | val contexts of the simulator split
    max_contexts: Optional[int] = None  # null = every context of the split
    bootstrap_samples: int = 1000
    ci_level: float = 0.95

    def __post_init__(self):
        one_of("split", self.split, SPLITS)
        at_least("max_contexts", self.max_contexts, 1)
        at_least("bootstrap_samples", self.bootstrap_samples, 1)
        fraction("ci_level", self.ci_level, open_low=True, open_high=True)


@dataclass
class EvalConfig(HeldOutConfig):
    policies: List[str] = field(default_factory=lambda: ["baseline", "sft", "grpo"])
    reference: str = "baseline"
    gsb: GSBConfig = field(default_factory=GSBConfig)
    diversity_embedder: str = "minilm-l6"
    calibration: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.policies:
            raise ConfigError("is empty; name at least one of baseline, sft, grpo or a model folder", "policies")
        if self.reference not in self.policies:
            raise ConfigError(f"'{self.reference}' is not in eval.policies {list(self.policies)}", "reference")
