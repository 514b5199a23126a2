"""The reward-model head's knobs (`reward_model.head`) and the kinds `reward_model.kinds` accepts, torch-free so
that checking a config loads no model code. Each kind is a head class in `models.reward_heads.HEADS`."""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("garm", "btrm")  # GaRM: μ, σ per suggestion | BTRM: one reward (the Bradley-Terry baseline)
POOLINGS = ("last", "mean")


@dataclass
class HeadConfig:
    pooling: str = "last"  # last (last non-pad token; decoders) | mean (over tokens; encoders such as MiniLM)
    sigma_min: float = 0.01  # GaRM σ = softplus(raw) + sigma_min
    sigma_init: float = 1.0  # GaRM σ before training (the raw bias is set to give it)
    normalize: bool = True  # RMS-normalise the pooled feature (no weights): same head scale on any backbone
    init_std: float = 0.005  # std of the head's initial weights
    max_length: int = 128  # tokens per (context, suggestion) input
