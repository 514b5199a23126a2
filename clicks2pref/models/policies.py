"""Trained policies as folders: the sft and grpo stages' `policy/` saved and loaded back.

An SFT artifact holds a LoRA adapter (on the base model recorded in `sft.json`) or a full model; a GRPO
artifact holds an adapter on the weights GRPO started from (the merged SFT policy or the base model).
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from clicks2pref.errors import ModelNotFoundError
from clicks2pref.models.registry import (ModelConfig, _from_pretrained, _torch_dtype, load_causal_lm, load_tokenizer,
                                         user_code_policy)


def save_policy(model, tok, folder: Path, merged: Optional[Path] = None) -> None:
    """Adapter (LoRA) or full model plus the tokenizer, via save_pretrained (safetensors)."""
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if merged is not None and hasattr(model, "merge_and_unload"):
        copy.deepcopy(model).merge_and_unload().save_pretrained(merged, safe_serialization=True)
        tok.save_pretrained(merged)


def artifact_meta(folder: Path, stage: str) -> dict:
    """The `<stage>.json` a policy artifact records itself in, or one line saying why it cannot be read."""
    meta_file = Path(folder) / f"{stage}.json"
    if not meta_file.exists():
        raise ModelNotFoundError(f"{folder} is not a {stage} artifact (no {stage}.json); pass artifacts/{stage}/<key> "
                                 f"from `python -m clicks2pref stage={stage}`")
    try:
        return json.loads(meta_file.read_text())
    except ValueError as e:
        raise ModelNotFoundError(f"{meta_file} is not valid JSON ({e})") from None


def load_sft_policy(path, cfg, merge: bool = True, trainable: bool = False):
    """(model, tokenizer) of an SFT artifact folder (`artifacts/sft/<key>`).

    A LoRA policy is its base model (recorded in `sft.json`) with the adapter; `merge=True` folds the
    adapter into the weights (a plain transformers model, what GRPO adds its own LoRA to), else the
    PEFT model is returned, its adapter trainable when `trainable`. A full fine-tune loads directly.
    """
    path = Path(path)
    meta_file, meta = path / "sft.json", artifact_meta(path, "sft")
    cache = cfg.paths.model_cache
    allowed = cfg.policy.model.trust_remote_code  # the user's switch, never the folder's
    base = ModelConfig(**{**user_code_policy(meta["model"], allowed, str(meta_file), "policy.model.trust_remote_code"),
                          "lora": None})
    tok = load_tokenizer(replace(base, name=str(path / "policy")), cache)
    if meta["method"] == "full" or (merge and (path / "merged").exists()):
        folder = path / ("policy" if meta["method"] == "full" else "merged")
        model = _from_pretrained(AutoModelForCausalLM, str(folder), dtype=_torch_dtype(base.dtype))
    else:
        model, _ = load_causal_lm(replace(base, quantization=base.quantization if not merge else None), cache,
                                  seed=meta["seed"])
        from peft import PeftModel  # lazy: importing peft loads bitsandbytes (extra)

        model = PeftModel.from_pretrained(model, str(path / "policy"), is_trainable=trainable and not merge)
        if merge:
            model = model.merge_and_unload()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_grpo_policy(path, cfg):
    """(model, tokenizer) of a GRPO artifact folder (`artifacts/grpo/<key>`), adapters merged.

    The adapters in `policy/` sit on the weights GRPO started from: the merged SFT policy recorded in
    `grpo.json` (resolved under this config's artifact root) or the base policy model.
    """
    path = Path(path)
    meta = artifact_meta(path, "grpo")
    policy = path / "policy"
    base = OmegaConf.to_object(cfg.policy.model)
    if not (policy / "adapter_config.json").exists():  # full fine-tuning saved the whole model
        tok = load_tokenizer(replace(base, name=str(policy), lora=None), cfg.paths.model_cache)
        return _from_pretrained(AutoModelForCausalLM, str(policy), dtype=_torch_dtype(base.dtype)), tok
    if meta["init"] == "sft":
        sft = Path(cfg.paths.artifacts_dir) / "sft" / meta["inputs"]["sft"]  # the artifact cache's layout
        if not (sft / "sft.json").exists():
            raise ModelNotFoundError(f"{path}: its SFT policy {sft} is missing (GRPO adapters need the weights "
                                     "they were trained on); run stage=sft with the same config or copy it there")
        model, tok = load_sft_policy(sft, cfg, merge=True)
    else:
        model, tok = load_causal_lm(replace(base, lora=None), cfg.paths.model_cache, seed=cfg.seed)
    from peft import PeftModel  # lazy: importing peft loads bitsandbytes (extra)

    model = PeftModel.from_pretrained(model, str(policy)).merge_and_unload()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
