"""`fusion`: how stage fusion fits the reward's weights and GaRM's κ to held-out clicks (`rewards.fusion`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from clicks2pref.errors import ConfigError

LOG_SOURCES = ("policy", "clicks")  # what stage fusion fits on


@dataclass
class FusionGridConfig:
    factors: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # per-weight multipliers (|factors|^K)
    floor: float = 0.1  # a weight below this starts the grid from it


@dataclass
class FusionConfig:
    logs: str = "policy"  # policy: the SFT policy's served week (stage serve) | clicks: `weeks` of the click logs
    within_context: bool = True  # centre scores within each context before fitting (GRPO compares within one)
    kappa_grid: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])  # GaRM κ candidates; [] = keep κ
    weeks: Optional[List[int]] = None  # logs=clicks: weeks of the logs fitted on; null = the last (see conf)
    C: float = 100.0  # inverse L2 strength of the logistic regression (large = nearly unregularised)
    candidate_contexts: int = 16  # held-out contexts the reference policy samples candidate panels for
    samples_per_context: int = 4  # candidate panels per context
    min_rule_pass: float = 0.8  # constraint: share of picked candidates passing every rule
    min_in_distribution: float = 0.8  # constraint: share of picked candidates with log-PPL ≤ τ
    grid: FusionGridConfig = field(default_factory=FusionGridConfig)

    def __post_init__(self):
        if self.logs not in LOG_SOURCES:
            raise ConfigError(f"unknown {self.logs!r}; accepted: {', '.join(LOG_SOURCES)}", "logs")
        if any(kappa < 0 for kappa in self.kappa_grid):
            raise ConfigError(f"{list(self.kappa_grid)}: every κ must be at least 0", "kappa_grid")
