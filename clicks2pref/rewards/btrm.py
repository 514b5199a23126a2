"""The BTRM reward: the Bradley-Terry model's scalar r per suggestion, examination-weighted over the panel.

The `btrm_instead_of_garm` ablation swaps this in for `garm`: same panel scoring, no uncertainty.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from clicks2pref.rewards.garm import GaRMReward


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


class BTRMReward(GaRMReward):
    kind = "btrm"

    def __init__(self, examination=None, missing_score: float = -1.0, path: Optional[str] = None,
                 batch_size: int = 32, panel: str = "click", redundancy: bool = True):
        super().__init__(0.0, examination, missing_score, path, batch_size, panel, redundancy)
