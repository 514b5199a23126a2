"""`serve`: the SFT policy's own logged traffic, which the reward models train on and fusion fits on."""
from __future__ import annotations

from dataclasses import dataclass

from clicks2pref.config.checks import at_least


@dataclass
class ServeConfig:
    contexts: int = 64  # training contexts served per week (a fresh sample each week)
    panels_per_context: int = 4  # panels sampled per context, as GRPO samples a group
    users_per_panel: int = 192  # simulated users each panel is shown to (sampled clicks)
    rm_weeks: int = 1  # weeks the reward models train on beside the click logs; one more week is fusion's

    def __post_init__(self):
        for key in ("contexts", "panels_per_context", "users_per_panel"):
            at_least(key, getattr(self, key), 1)
        at_least("rm_weeks", self.rm_weeks, 0)
