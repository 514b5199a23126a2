"""What a model is, as the config names it (`ModelConfig`: registry name, dtype, quantisation, LoRA), the registry's
packaged names, and how it samples (`GenerationConfig`: `policy.generation`, `teacher.generation`, ...).

Read by `clicks2pref.models.registry` (which loads the models) and `clicks2pref.models.generate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from clicks2pref.errors import ConfigError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "minilm-l6"
TINY_LLAMA = "tiny-llama"


@dataclass
class LoraConfig:
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"


@dataclass
class ModelConfig:
    name: str = SMOLLM2
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: Optional[str] = None  # null | 8bit | 4bit
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    revision: Optional[str] = None
    lora: Optional[LoraConfig] = None
    # tiny-llama shape (used only when name == tiny-llama)
    tiny_hidden_size: int = 64
    tiny_num_layers: int = 2
    tiny_num_heads: int = 4
    tiny_intermediate_size: int = 128


@dataclass
class GenerationConfig:
    """The sampling knobs of `models.generate`."""

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
