"""`rewards`: the reward GRPO trains on, as the preset and each component's `_target_` spec.

Each component's `_target_` names its class in the module of the same name (`rewards.garm.GaRMReward`), and that
module re-exports its config, so `from clicks2pref.rewards.garm import GaRMRewardConfig` still works. The name
tables the checks accept (`COMPONENTS`, `PANELS`, ...) live here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from clicks2pref.errors import ConfigError

COMPONENTS = ("garm", "btrm", "external", "rule", "ppl", "diversity")
WEIGHT_SOURCES = ("fusion", "equal", "config")
RULE_FAILING = ("below", "min")
PANELS = ("click", "mean")  # how suggestion scores make a panel score (`rewards.base.panel_scores`)
NEEDS_RM = {"garm": "garm", "btrm": "btrm"}  # component -> reward-model kind it reads


@dataclass
class GaRMRewardConfig:
    _target_: str = "clicks2pref.rewards.garm.GaRMReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    kappa: float = 1.0  # μ − κσ; 0 = mean only
    examination: Optional[List[float]] = None  # null = rewards.examination
    panel: Optional[str] = None  # click (P(any click)) | mean (examination-weighted mean); null = rewards.panel
    missing_score: float = -1.0  # panel=mean: score of an empty position (μ units)
    redundancy: Optional[bool] = None  # the model's learned redundancy term (panel=click); null = rewards.redundancy
    path: Optional[str] = None  # trained model folder; null = this config's stage=rm output
    batch_size: int = 32


@dataclass
class BTRMRewardConfig:
    _target_: str = "clicks2pref.rewards.btrm.BTRMReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    examination: Optional[List[float]] = None  # null = rewards.examination
    panel: Optional[str] = None  # click (P(any click), a = sigmoid(r)) | mean; null = rewards.panel
    missing_score: float = -1.0  # panel=mean: score of an empty position (reward units)
    redundancy: Optional[bool] = None  # the model's learned redundancy term (panel=click); null = rewards.redundancy
    path: Optional[str] = None  # trained model folder; null = this config's stage=rm output
    batch_size: int = 32


@dataclass
class ExternalRewardConfig:
    _target_: str = "clicks2pref.rewards.external.ExternalReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    name_or_path: Optional[str] = None  # HF hub id or folder of a sequence-classification RM; null = trained BTRM
    examination: Optional[List[float]] = None  # null = rewards.examination (an HF RM needs a list somewhere)
    panel: Optional[str] = None  # click (P(any click), a = sigmoid(score)) | mean; null = rewards.panel
    missing_score: float = -1.0  # panel=mean: score of an empty position (reward units)
    redundancy: Optional[bool] = None  # the trained BTRM's redundancy term (panel=click); null = rewards.redundancy
    batch_size: int = 16
    max_length: int = 256  # tokens per (conversation, suggestion); the conversation is cut from the left
    trust_remote_code: bool = False


@dataclass
class RuleRewardConfig:
    _target_: str = "clicks2pref.rewards.rule.RuleReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    min_words: int = 3
    max_words: int = 15
    duplicate_threshold: float = 0.7  # Jaccard of content words above which a later suggestion duplicates
    copy_threshold: float = 0.7  # Jaccard with the user's last question above which a suggestion copies it
    min_letter_ratio: float = 0.6
    unparseable_score: float = -1.0  # hard floor for output with no suggestion at all
    check_weights: Dict[str, float] = field(default_factory=lambda: {
        "format": 2.0, "length": 1.0, "question": 1.0, "duplicate": 1.0, "copy": 1.0, "clean": 1.0})


@dataclass
class PerplexityRewardConfig:
    _target_: str = "clicks2pref.rewards.ppl.PerplexityReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    quantile: float = 0.95  # τ = this quantile of the logged panels' reference log-perplexity
    tau: Optional[float] = None  # fixed τ (nats per token); null = calibrate on the click logs
    calibration_panels: int = 64  # distinct logged panels τ is calibrated on


@dataclass
class DiversityRewardConfig:
    _target_: str = "clicks2pref.rewards.diversity.DiversityReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    embedder: str = "minilm-l6"  # registry sentence embedder | lexical (word overlap, fast tests)
    single_score: float = 0.0  # score of a panel with fewer than two suggestions


@dataclass
class RewardsConfig:
    name: str = "full"  # preset name, for reports
    weights: str = "fusion"  # fusion | equal | config
    examination: Optional[List[float]] = None  # null = each reward model's learned e_k
    panel: str = "click"  # click | mean: how suggestion scores make a panel score (clicks2pref.rewards.base)
    rule_constraint: bool = True  # a panel failing a rule ranks at the bottom of its group (same context)
    rule_failing: str = "below"  # below: under every passing panel, in its own order | min: at the group's minimum
    redundancy: bool = True  # apply each reward model's learned redundancy term (panel=click) when it has one
    fit_kappa: bool = True  # stage fusion picks garm.kappa from fusion.kappa_grid | false keeps it (mean_only)
    embedder: str = "minilm-l6"  # sentence embedder of the diversity term | lexical
    # the defaults are conf/rewards/full.yaml's: every component but btrm
    garm: Optional[GaRMRewardConfig] = field(default_factory=GaRMRewardConfig)
    btrm: Optional[BTRMRewardConfig] = None
    external: Optional[ExternalRewardConfig] = field(default_factory=lambda: ExternalRewardConfig(batch_size=32))
    rule: Optional[RuleRewardConfig] = field(default_factory=RuleRewardConfig)
    ppl: Optional[PerplexityRewardConfig] = field(default_factory=PerplexityRewardConfig)
    diversity: Optional[DiversityRewardConfig] = field(default_factory=DiversityRewardConfig)

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ConfigError(f"unknown {self.weights!r}; accepted: {', '.join(WEIGHT_SOURCES)}", "weights")
        if self.panel not in PANELS:
            raise ConfigError(f"unknown {self.panel!r}; accepted: {', '.join(PANELS)}", "panel")
        if self.rule_failing not in RULE_FAILING:
            raise ConfigError(f"unknown {self.rule_failing!r}; accepted: {', '.join(RULE_FAILING)}", "rule_failing")
        if not enabled(self):
            raise ConfigError("every component is null; enable at least one (e.g. rewards=full)", "name")


def enabled(rewards) -> list[str]:
    return [name for name in COMPONENTS if getattr(rewards, name, None) is not None]


def needed_reward_models(rewards) -> list[str]:
    """Reward-model kinds stage=rm must provide for these components (a dict config or the typed one)."""
    kinds = [NEEDS_RM[n] for n in enabled(rewards) if n in NEEDS_RM and getattr(rewards, n).path is None]
    ext = getattr(rewards, "external", None)
    if ext is not None and ext.name_or_path is None:
        kinds.append("btrm")
    return list(dict.fromkeys(kinds))
