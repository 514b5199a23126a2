"""Losses as pure torch functions: Bradley-Terry, Gaussian (GaRM), click model, GRPO, SFT, DPO; no models, no
Lightning.

`OBJECTIVES` is the registry of reward-model objectives (`reward_model.objective`, its table in
`clicks2pref.config.objectives` with the option names the other losses accept): each name is the module
`clicks2pref.objectives.<name>`, whose `batch_loss(head, out, batch, cfg, **state) -> (terms, parts)` scores
one batch from the head's outputs (`clicks2pref.models.reward_heads`: the head supplies its own likelihood,
attraction and regulariser, so one objective trains GaRM and BTRM alike). `terms` are (local mean, the count
it averages over), which the Lightning module turns into its share of the global batch's mean; `parts` are
detached values for the log. `reads` is the data it trains on: `pairs` (clicked ≻ skipped, the pair loader)
or `impressions` (every panel shown, with its clicks and user count). This file imports no torch.
"""
from __future__ import annotations

import importlib
from typing import Callable

from clicks2pref.config.objectives import OBJECTIVES, READS  # noqa: F401 (READS: re-exported)


def objective_reads(name: str) -> str:
    return OBJECTIVES[name]["reads"]


def batch_loss(name: str) -> Callable:
    """The `batch_loss` of objective `name` (imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}").batch_loss
