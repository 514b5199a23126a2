"""`reward_model.pairs`: which clicked ≻ shown-and-not-clicked pairs the reward models train and are tested on.

Read by `clicks2pref.data.pairs` (which builds the pairs; its docstring explains each position filter) and
`clicks2pref.data.impressions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

POSITION_FILTERS = ("skip_above", "same_position", "none")


@dataclass
class PairConfig:
    position_filter: str = "skip_above"  # skip_above | same_position | none
    train_weeks: Optional[List[int]] = None  # null = every week of the logs but the last
    test_weeks: Optional[List[int]] = None  # the in-distribution (IID) test; null = the logs' last week
    ood_weeks: Optional[List[int]] = None  # weeks of data.ood_logs used as the OOD test; null = all
    val_fraction: float = 0.1  # share of training panels held out for rm/val_* metrics
    seed: int = 0  # of the validation split
