"""The BTRM reward: the Bradley-Terry model's scalar r per suggestion, examination-weighted over the panel.

The `btrm_instead_of_garm` ablation swaps this in for `garm`: same panel scoring, no uncertainty.

Its `_target_` config, `BTRMRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

from typing import Optional

from clicks2pref.config.rewards import BTRMRewardConfig  # noqa: F401 (re-exported)
from clicks2pref.rewards.garm import GaRMReward


class BTRMReward(GaRMReward):
    kind = "btrm"

    def __init__(self, examination=None, missing_score: float = -1.0, path: Optional[str] = None,
                 batch_size: int = 32, panel: str = "click", redundancy: bool = True):
        super().__init__(0.0, examination, missing_score, path, batch_size, panel, redundancy)
