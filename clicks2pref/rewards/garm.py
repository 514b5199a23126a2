"""The GaRM reward: per suggestion μ − κσ, the panel score their examination-weighted mean (SPEC 5.5).

κ (`rewards.garm.kappa`, default 1) turns GaRM's uncertainty into a penalty: a suggestion the reward
model is unsure about earns less, which steers the policy towards what the clicks actually support.
κ = 0 is the `mean_only` ablation. Positions weigh by examination probabilities set in
`conf/rewards/` (the simulator's own values are not read: the reward knows only what a designer would).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from torch import Tensor

from clicks2pref.errors import ConfigError
from clicks2pref.rewards.base import RewardBatch, panel_scores
from clicks2pref.rewards.shared_prefix import rm_rewards


@dataclass
class GaRMRewardConfig:
    _target_: str = "clicks2pref.rewards.garm.GaRMReward"
    weight: float = 1.0  # weight in the composite when rewards.weights=config
    kappa: float = 1.0  # μ − κσ; 0 = mean only
    examination: List[float] = field(default_factory=lambda: [0.9, 0.6, 0.4])
    missing_score: float = -1.0  # score of an empty position (μ units; the kl_prior keeps μ near N(0, 1))
    path: Optional[str] = None  # trained model folder; null = this config's stage=rm output
    batch_size: int = 32


class GaRMReward:
    kind = "garm"

    def __init__(self, kappa: float = 1.0, examination=(0.9, 0.6, 0.4), missing_score: float = -1.0,
                 path: Optional[str] = None, batch_size: int = 32):
        self.kappa, self.examination, self.missing_score = float(kappa), list(examination), float(missing_score)
        self.path, self.batch_size = path, batch_size
        self.model = self.scorer = None

    def setup(self, resources) -> None:
        self.model = resources.reward_model(self.kind, self.path)
        if getattr(self.model, "kind", self.kind) != self.kind:
            raise ConfigError(f"rewards.{self.kind}.path holds a {self.model.kind} model; point it at a {self.kind}")
        self.scorer = resources.scorer((self.kind, self.path, self.kappa), self.score_suggestions)

    def score_suggestions(self, contexts: list[list[dict]], suggestions: list[str]) -> Tensor:
        return rm_rewards(self.model, contexts, suggestions, kappa=self.kappa, batch_size=self.batch_size)

    def __call__(self, batch: RewardBatch) -> Tensor:
        if self.scorer is None:
            raise RuntimeError(f"{type(self).__name__}.setup(resources) was not called")
        return panel_scores(self.scorer(batch), self.examination, self.missing_score)
