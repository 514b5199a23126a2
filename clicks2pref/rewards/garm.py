"""The GaRM reward: per suggestion μ − κσ, and the panel's score from them (SPEC 5.5).

κ (`rewards.garm.kappa`) turns GaRM's uncertainty into a penalty: a suggestion the reward model is
unsure about earns less, which steers the policy towards what the clicks actually support. κ = 0 is
the `mean_only` ablation. `panel: click` (the default) reads each suggestion as a click probability
a = Φ((μ − κσ)/√(1 + σ²)) and scores the panel by P(at least one click) = 1 − Π_k (1 − e_k a_k);
`panel: mean` is the examination-weighted mean of μ − κσ. The examination e_k is the reward model's
own (learned from the logs by `objective=click_model`) unless `examination` sets it; the simulator's
values are never read. With `redundancy` (and panel=click), a suggestion close to one above it keeps only
the share g of its click probability that the reward model's redundancy term, fitted on the same logs,
gives it: the per-suggestion network cannot see the rest of the panel.

Its `_target_` config, `GaRMRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from clicks2pref.config.rewards import GaRMRewardConfig  # noqa: F401 (re-exported)
from clicks2pref.errors import ConfigError
from clicks2pref.models.reward_heads import scalar_rewards
from clicks2pref.rewards.base import RewardBatch, map_panels, panel_scores, resolve_examination
from clicks2pref.rewards.redundancy import redundancy_discounts, resolve_redundancy
from clicks2pref.models.shared_prefix import rm_outputs


class GaRMReward:
    kind = "garm"

    def __init__(self, kappa: float = 1.0, examination=None, missing_score: float = -1.0,
                 path: Optional[str] = None, batch_size: int = 32, panel: str = "click", redundancy: bool = True):
        self.kappa, self.missing_score, self.panel = float(kappa), float(missing_score), panel
        self.use_redundancy, self.redundancy, self.similarity = bool(redundancy), None, None
        self.configured_examination = None if examination is None else list(examination)
        self.examination: Optional[list[float]] = self.configured_examination
        self.path, self.batch_size = path, batch_size
        self.model = self.scorer = None

    def setup(self, resources) -> None:
        self.model = resources.reward_model(self.kind, self.path)
        if getattr(self.model, "kind", self.kind) != self.kind:
            raise ConfigError(f"rewards.{self.kind}.path holds a {self.model.kind} model; point it at a {self.kind}")
        self.examination = resolve_examination(self.configured_examination, self.model, self.kind)
        self.redundancy, self.similarity = resolve_redundancy(self.use_redundancy and self.panel == "click",
                                                              self.model, resources)
        # one cache per model, of its head's outputs: every κ and panel link reuses the same forward passes
        self.scorer = resources.scorer((self.kind, self.path),
                                       lambda c, s: rm_outputs(self.model, c, s, batch_size=self.batch_size))

    def __call__(self, batch: RewardBatch) -> Tensor:
        if self.scorer is None:
            raise RuntimeError(f"{type(self).__name__}.setup(resources) was not called")
        scores = map_panels(self.scorer(batch),
                            lambda out: scalar_rewards(out, self.kind, self.kappa, self.panel == "click"))
        return panel_scores(scores, self.examination, self.missing_score, self.panel,
                            redundancy_discounts(batch.panels, self.redundancy, self.similarity))
