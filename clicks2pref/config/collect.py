"""`collect` and `eval`: the logging rounds of stage 1 and the side-by-side evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from clicks2pref.config.checks import at_least, fraction, one_of
from clicks2pref.config.data import SPLIT_BY
from clicks2pref.config.model import ModelConfig
from clicks2pref.errors import ConfigError

SPLITS = ("test", "val")  # held-out context splits of the simulator (never in any log)


@dataclass
class CollectConfig:
    contexts_per_template: int = 40
    weeks: int = 4
    sessions_per_week: int = 60
    users_per_panel: int = 192
    shuffle_positions: bool = True  # each user sees the panel in a random order (exploration for the click model)
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
    samples_per_context: int = 1  # panels sampled per context; a context's CTR is their mean
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    ci_clusters: str = "topic"  # topic: bootstrap whole topics (their contexts share intents) | context

    def __post_init__(self):
        one_of("split", self.split, SPLITS)
        one_of("ci_clusters", self.ci_clusters, SPLIT_BY)
        at_least("max_contexts", self.max_contexts, 1)
        at_least("samples_per_context", self.samples_per_context, 1)
        at_least("bootstrap_samples", self.bootstrap_samples, 1)
        fraction("ci_level", self.ci_level, open_low=True, open_high=True)


@dataclass
class BestOfConfig:
    """Best-of-n reranking of sampled panels by a reward component (`clicks2pref.eval.best_of`)."""

    n: int = 16  # panels per context to choose from (≤ samples_per_context); 0 = off
    policies: List[str] = field(default_factory=lambda: ["sft"])  # whose samples are reranked (those evaluated)
    reward: str = "composite"  # the `rewards` component that scores panels (garm | btrm | external | rule | diversity),
    # or composite: the reward GRPO trains on (fused weights and κ, ppl against the SFT policy, rule constraint)

    def __post_init__(self):
        at_least("n", self.n, 0)
        one_of("reward", self.reward, ("garm", "btrm", "external", "rule", "diversity", "composite"))


@dataclass
class OfflineConfig:
    """Offline estimates without an oracle (`clicks2pref.eval.offline`, `clicks2pref.eval.ab_plan`)."""

    estimator: str = "garm"  # the reward model read as a click model (garm | btrm); the other kind cross-checks
    sigma_band: float = 1.0  # GaRM's uncertainty band: the estimate at μ ∓ band·σ
    alpha: float = 0.05  # the A/B plan's two-sided significance level
    power: float = 0.8  # the A/B plan's power

    def __post_init__(self):
        one_of("estimator", self.estimator, ("garm", "btrm"))
        at_least("sigma_band", self.sigma_band, 0)
        fraction("alpha", self.alpha, open_low=True, open_high=True)
        fraction("power", self.power, open_low=True, open_high=True)


@dataclass
class ReferencePanelsConfig:
    """The table's floor and ceiling (`clicks2pref.eval.reference_panels`)."""

    canned: List[str] = field(default_factory=lambda: [  # {title}: the topic's title; [] = no canned row
        "What is the best way to get started with {title}?", "How much does {title} cost?",
        "What are the most common mistakes with {title}?"])
    ideal: bool = True  # the oracle's greedy best panel of the world's own questions (an upper bound)

    def __post_init__(self):
        for t in self.canned:
            if "{title}" not in t:
                raise ConfigError(f"template '{t}' has no {{title}} to fill", "reference_panels.canned")


@dataclass
class EvalConfig(HeldOutConfig):
    samples_per_context: int = 16
    policies: List[str] = field(default_factory=lambda: ["baseline", "sft", "grpo"])
    reference: str = "baseline"
    gsb: GSBConfig = field(default_factory=GSBConfig)
    target_half_width: float = 0.005  # the report's panels plan: panels per context a paired CI this narrow needs
    diversity_embedder: str = "minilm-l6"
    calibration: bool = True
    best_of: BestOfConfig = field(default_factory=BestOfConfig)
    reference_panels: ReferencePanelsConfig = field(default_factory=ReferencePanelsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.best_of.n > self.samples_per_context:
            raise ConfigError(f"{self.best_of.n} is more than eval.samples_per_context={self.samples_per_context}: "
                              f"best-of-n chooses among the evaluation's own samples", "best_of.n")
        if not self.policies:
            raise ConfigError("is empty; name at least one of baseline, sft, grpo or a model folder", "policies")
        if not self.target_half_width > 0:
            raise ConfigError(f"{self.target_half_width} must be > 0", "target_half_width")
        if self.reference not in self.policies:
            raise ConfigError(f"'{self.reference}' is not in eval.policies {list(self.policies)}", "reference")
