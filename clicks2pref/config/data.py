"""`data`: where click logs come from, how the simulator's contexts are split, and which logged conversations are
held out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from clicks2pref.config.checks import fraction, one_of

FORMATS = ("jsonl", "parquet")
ON_INVALID = ("error", "skip")  # a record that breaks a rule fails the load | is skipped and counted (`data.io`)
SPLIT_BY = ("context", "topic")  # what the simulator's context split holds out whole (`data.simulator.world`)


@dataclass
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0
    by: str = "topic"  # topic: whole topics held out | context: (topic, facet) pairs (the v1 tables' split)

    def __post_init__(self):
        one_of("by", self.by, SPLIT_BY)
        fraction("val_fraction", self.val_fraction, open_high=True)
        fraction("test_fraction", self.test_fraction, open_low=True, open_high=True)
        fraction("test_fraction", self.val_fraction + self.test_fraction, open_high=True)


@dataclass
class HoldoutConfig:
    """Held-out conversations of the logs (`clicks2pref.data.log_splits`): with two weeks or more, those first
    logged in the last week; with one, a hash share of them."""
    fraction: float = 0.25  # one week: share of conversations held out
    val_fraction: float = 0.5  # share of held-out conversations for fusion's fit and GRPO's selection (rest: evaluate)
    seed: int = 0

    def __post_init__(self):
        fraction("fraction", self.fraction, open_low=True, open_high=True)
        fraction("val_fraction", self.val_fraction, open_high=True)


@dataclass
class DataConfig:
    logs: Optional[str] = None  # path or glob of click logs; null = this config's collect output
    ood_logs: Optional[str] = None  # another policy's logs: the reward models' OOD test
    on_invalid: str = "error"  # error | skip
    format: str = "jsonl"  # jsonl | parquet
    split: SplitConfig = field(default_factory=SplitConfig)
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)

    def __post_init__(self):
        one_of("on_invalid", self.on_invalid, ON_INVALID)
        one_of("format", self.format, FORMATS)
