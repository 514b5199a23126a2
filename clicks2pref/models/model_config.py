"""What a model is, as the config names it: `ModelConfig` (registry name, dtype, quantisation, LoRA) and the
registry's packaged names. Torch-free, so checking a config loads no model code (`models.registry` loads them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

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
