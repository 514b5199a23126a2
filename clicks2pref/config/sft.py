"""`sft` and `teacher`: fine-tuning a causal LM on click-derived targets (the policy, and its teacher).

`sft.data` (`SFTDataConfig`) is read by `clicks2pref.data.sft_data`, `sft.assembly` (`AssemblyConfig`) by
`clicks2pref.data.assembly` (which loads the sentence embedder); both import them from here, so checking a config
loads no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from clicks2pref.config.checks import at_least, one_of, optimizer_lr
from clicks2pref.config.collect import HeldOutConfig
from clicks2pref.config.model import SMOLLM2, GenerationConfig, LoraConfig, ModelConfig

METHODS = ("full", "lora", "qlora")


@dataclass
class SFTDataConfig:
    min_clicks: int = 1  # a suggestion is a candidate once clicked at least this often in its context
    first_week: int = 1  # weeks of logs read, inclusive
    last_week: Optional[int] = None  # null = every week in the logs
    dedup: bool = True  # merge suggestions that differ only in case, spacing or final punctuation
    val_fraction: float = 0.1  # share of context groups held out for validation loss and format rate


@dataclass
class AssemblyConfig:
    enabled: bool = True  # false = the first k distinct candidates, no filter (Table 3 "assembly off")
    k: int = 3  # suggestions per target (the policy format)
    max_cosine: float = 0.85  # reject a candidate closer than this to a chosen one (MiniLM cosine)
    max_ngram_overlap: float = 0.5  # reject when this share of the shorter one's word n-grams is shared
    ngram: int = 2  # n of the word n-grams
    similarity: str = "minilm"  # minilm (sentence embeddings) | lexical (bag-of-words cosine, fast tests)
    embedder: str = "minilm-l6"  # registry name of the sentence embedder
    min_words: int = 3  # rules: shorter candidates are rejected
    max_words: int = 15  # rules: longer candidates are rejected
    require_question: bool = True  # rules: must end with '?' or start with a question word
    max_context_cosine: float = 0.9  # rules: reject near-copies of the user's last question


def _cosine_warmup(steps_key: str) -> Dict[str, Any]:
    return {"_target_": "transformers.get_cosine_schedule_with_warmup", "_partial_": True, "num_warmup_steps": 3,
            "num_training_steps": "${" + steps_key + "}"}


def _adamw(lr: float) -> Dict[str, Any]:
    return {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": lr, "weight_decay": 0.0}


@dataclass
class SFTTrainConfig:
    max_steps: int = 24  # optimizer steps
    batch_size: int = 4  # global batch (split evenly over processes)
    max_length: int = 256  # longer examples (prompt + target) are dropped and counted
    val_every_n_steps: int = 24  # validation loss and format rate every N steps (and at the end)
    validate_before: bool = True  # also measure validation loss before the first step
    ckpt_every_n_steps: int = 6  # Lightning checkpoint (trainable weights + optimizer) for resuming
    format_probe: int = 8  # held-out prompts generated at each validation for the format rate; 0 = off
    max_nonfinite_steps: int = 10  # consecutive NaN/inf losses tolerated (each skips its step)
    optimizer: Dict[str, Any] = field(default_factory=lambda: _adamw(1e-3))
    scheduler: Optional[Dict[str, Any]] = field(default_factory=lambda: _cosine_warmup("sft.train.max_steps"))

    def __post_init__(self):
        for key in ("max_steps", "batch_size", "max_length", "ckpt_every_n_steps", "max_nonfinite_steps"):
            at_least(key, getattr(self, key), 1)
        at_least("val_every_n_steps", self.val_every_n_steps, 0)
        at_least("format_probe", self.format_probe, 0)
        optimizer_lr("optimizer", self.optimizer)


@dataclass
class SFTEvalConfig(HeldOutConfig):
    enabled: bool = True  # oracle CTR and format rate of the SFT policy on held-out contexts
    baseline: bool = True  # the same for the prompted base policy, with a paired lift


@dataclass
class SFTConfig:
    method: str = "lora"  # full | lora | qlora (LoRA on a 4-bit base; bitsandbytes, GPUs)
    lora: LoraConfig = field(default_factory=LoraConfig)
    template: Optional[str] = None  # prompt template to train on; null = collect's best_template
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    save_merged: bool = False  # also save LoRA merged into the base (a plain transformers model)
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)

    def __post_init__(self):
        one_of("method", self.method, METHODS)


def _teacher_train() -> SFTTrainConfig:
    return SFTTrainConfig(max_steps=16, val_every_n_steps=16, ckpt_every_n_steps=8, format_probe=0,
                          scheduler=_cosine_warmup("teacher.train.max_steps"))


@dataclass
class TeacherConfig:
    name: str = "smollm2"  # label in reports (none = no teacher, the clicks are the candidates)
    model: Optional[ModelConfig] = field(default_factory=lambda: ModelConfig(name=SMOLLM2))  # null = no teacher
    method: str = "lora"  # full | lora | qlora
    lora: LoraConfig = field(default_factory=LoraConfig)
    system: Optional[str] = "You predict the user's next question."  # teacher prompt: system turn
    instruction: str = "My next question, as one line numbered 1."
    train: SFTTrainConfig = field(default_factory=_teacher_train)
    num_candidates: int = 5  # questions sampled per context
    keep_clicked: bool = False  # also keep the clicked suggestions as candidates (ranked first)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(
        max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, do_sample=True, batch_size=16))

    def __post_init__(self):
        one_of("method", self.method, METHODS)
        at_least("num_candidates", self.num_candidates, 1)


def training_model_config(base: ModelConfig, method: str, lora: LoraConfig) -> ModelConfig:
    """The ModelConfig actually trained: `base` with LoRA (and 4-bit for qlora) per `method`."""
    one_of("method", method, METHODS)
    base, lora = (OmegaConf.to_object(x) if OmegaConf.is_config(x) else x for x in (base, lora))
    if method == "full":
        return replace(base, lora=None)
    return replace(base, lora=lora, quantization="4bit" if method == "qlora" else base.quantization)
