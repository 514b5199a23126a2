"""`data`: where click logs come from and how the simulator's contexts are split."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from clicks2pref.config.checks import fraction, one_of
from clicks2pref.data.io import ON_INVALID

FORMATS = ("jsonl", "parquet")


@dataclass
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        fraction("val_fraction", self.val_fraction, open_high=True)
        fraction("test_fraction", self.test_fraction, open_low=True, open_high=True)
        fraction("test_fraction", self.val_fraction + self.test_fraction, open_high=True)


@dataclass
class DataConfig:
    logs: Optional[str] = None  # path or glob of click logs; null = this config's collect output
    ood_logs: Optional[str] = None  # another policy's logs: the reward models' OOD test
    on_invalid: str = "error"  # error | skip
    format: str = "jsonl"  # jsonl | parquet
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self):
        one_of("on_invalid", self.on_invalid, ON_INVALID)
        one_of("format", self.format, FORMATS)
