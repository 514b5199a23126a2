"""The sampling knobs of `models.generate` (`policy.generation`, `sft.generation`, ...), torch-free so that
checking a config loads no model code."""
from __future__ import annotations

from dataclasses import dataclass

from clicks2pref.errors import ConfigError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 56
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50  # transformers' default when a model's generation config names none; 0 = off
    do_sample: bool = True
    batch_size: int = 24

    def __post_init__(self):
        for key in ("max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{getattr(self, key)} must be at least 1", key)
        if not self.temperature > 0:
            raise ConfigError(f"{self.temperature} must be > 0", "temperature")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{self.top_p} must be in (0, 1]", "top_p")
        if self.top_k < 0:
            raise ConfigError(f"{self.top_k} must be at least 0 (0 = off)", "top_k")
