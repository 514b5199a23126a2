"""Reward models on any registry backbone: BTRM (one scalar) and GaRM (μ and σ) per suggestion (SPEC 5.3).

The input is one suggestion in its conversation. For chat models it is the backbone tokenizer's chat
template over the logged context plus the suggestion as the assistant's reply, read at the last
non-pad token (`pooling: last`, which is `<|im_end|>` closing the suggestion). For an encoder such as
MiniLM, which has no chat template, it is plain "user: ... assistant: ... [SEP] suggestion" text,
read by mean pooling over tokens (`pooling: mean`), the way sentence-transformers trained it.
Over-long inputs lose the start of the context, never the suggestion.

`save_reward_model` / `load_reward_model` store a trained model as `reward_model.json` plus
safetensors (the LoRA adapter, or the whole backbone when it was fully fine-tuned, and the head):
the GRPO stage loads it with `load_reward_model(path)`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from clicks2pref.config.model import LoraConfig, ModelConfig
from clicks2pref.config.reward_model import POOLINGS, HeadConfig
from clicks2pref.errors import ModelNotFoundError
from clicks2pref.models.placement import on_device
from clicks2pref.models.registry import load_backbone, user_code_policy
from clicks2pref.objectives.bradley_terry import bt_loss
from clicks2pref.objectives.click_model import btrm_attraction, garm_attraction
from clicks2pref.objectives.gaussian import garm_loss, garm_z, regularization, sigma_from_raw

class RewardModel(nn.Module):
    """Backbone + the head of its kind (`HEADS`). `forward` returns the head's outputs per input: {"reward"}
    (btrm) or {"mu", "sigma"} (garm)."""

    def __init__(self, backbone: nn.Module, tokenizer, kind: str, head: HeadConfig):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown reward model kind {kind!r}; accepted: {', '.join(HEADS)}")
        if head.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {head.pooling!r}; accepted: {', '.join(POOLINGS)}")
        self.backbone, self.tokenizer, self.kind, self.cfg = backbone, tokenizer, kind, head
        self.head = HEADS[kind](backbone.config.hidden_size, head)
        self.chat = getattr(tokenizer, "chat_template", None) is not None
        self.examination: Optional[list[float]] = None  # e_k learned beside it (objective=click_model)
        self.redundancy: Optional[dict] = None  # {"embedder", "weight", "threshold"} fitted from the same logs
        self._cache: dict[tuple[str, str], list[int]] = {}

    # --- text -> tokens ---------------------------------------------------------------------------

    def encode(self, context: list[dict], suggestion: str) -> list[int]:
        """Token ids of one (context, suggestion) input, at most `max_length`, the context cut from the left."""
        key = (json.dumps(context, ensure_ascii=False), suggestion)
        if key not in self._cache:
            prefix, suffix, tail = self._segments(context, suggestion)
            head = self._head_tokens()
            room = max(self.cfg.max_length - len(head) - len(tail), 1)
            suffix = suffix[-room:]  # a suggestion longer than everything keeps its end (closing token)
            keep = room - len(suffix)
            prefix = prefix[max(len(prefix) - keep, 0):] if keep > 0 else []
            self._cache[key] = head + prefix + suffix + tail
        return self._cache[key]

    def _head_tokens(self) -> list[int]:
        return [] if self.chat or self.tokenizer.cls_token_id is None else [self.tokenizer.cls_token_id]

    def _segments(self, context: list[dict], suggestion: str) -> tuple[list[int], list[int], list[int]]:
        tok = self.tokenizer
        if self.chat:
            messages = [{"role": t["role"], "content": t["content"]} for t in context]
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": suggestion}], tokenize=False)
            prefix = tok.apply_chat_template(messages, tokenize=False)
            full = full.rstrip()
            if not full.startswith(prefix):  # a template that rewrites earlier turns: tokenize it whole
                return [], tok(full, add_special_tokens=False)["input_ids"], []
            return (tok(prefix, add_special_tokens=False)["input_ids"],
                    tok(full[len(prefix):], add_special_tokens=False)["input_ids"], [])
        text = " ".join(f"{t['role']}: {t['content']}" for t in context)
        sep = [tok.sep_token_id] if tok.sep_token_id is not None else []
        return (tok(text, add_special_tokens=False)["input_ids"] + sep,
                tok(suggestion, add_special_tokens=False)["input_ids"], sep)

    def collate(self, items: Sequence[tuple[list[dict], str]]) -> dict[str, Tensor]:
        """Right-padded `input_ids` and `attention_mask` for (context, suggestion) items."""
        ids = [self.encode(c, s) for c, s in items]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])}

    # --- scoring ------------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        if self.cfg.pooling == "last":  # last position whose mask is 1, whatever the padding side
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (positions * attention_mask).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head_outputs(pooled)

    def head_outputs(self, pooled: Tensor) -> dict[str, Tensor]:
        """The head on pooled features: {"reward"} (BTRM) or {"mu", "sigma"} (GaRM)."""
        pooled = pooled.to(self.head.weight.dtype)
        if self.cfg.normalize:  # SmolLM2's last hidden states have norm ~50, MiniLM's ~5: same head, same lr
            pooled = pooled * torch.rsqrt(pooled.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.head(pooled)

    @torch.no_grad()
    def score(self, contexts: Sequence[list[dict]], suggestions: Sequence[str], batch_size: int = 32
              ) -> dict[str, Tensor]:
        """Per-suggestion outputs in input order (batched by length), in eval mode."""
        items = list(zip(contexts, suggestions))
        order = sorted(range(len(items)), key=lambda i: len(self.encode(*items[i])))
        was_training = self.training
        self.eval()
        on_device(self)
        device = self.head.weight.device
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, len(order), batch_size):
            batch = self.collate([items[i] for i in order[start:start + batch_size]])
            for k, v in self(**{k: t.to(device) for k, t in batch.items()}).items():
                parts.setdefault(k, []).append(v.float().cpu())
        self.train(was_training)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        if not order:
            return {k: torch.zeros(0) for k in self.head.outputs}
        return {k: torch.cat(v)[inverse] for k, v in parts.items()}

    def rewards(self, contexts: Sequence[list[dict]], suggestions: Sequence[str], kappa: float = 0.0,
                batch_size: int = 32, attraction: bool = False) -> Tensor:
        """Scalar reward per suggestion (`scalar_rewards`)."""
        return scalar_rewards(self.score(contexts, suggestions, batch_size), self.kind, kappa, attraction)


def scalar_rewards(out: dict[str, Tensor], kind: str, kappa: float = 0.0, attraction: bool = False) -> Tensor:
    """The scalar reward of the head outputs `out` of a `kind` model (its head's `scalar`)."""
    return HEADS[kind].scalar(out, kappa, attraction)


# --- the heads: what a GaRM and a BTRM compute, and what each says about a preference and a click ---------------
#
# A head is a linear layer on the pooled feature (its state dict is a Linear's: `weight`, `bias`) whose `forward`
# names its outputs, plus what the objectives ask of it (`clicks2pref.objectives`): the loss of pairs under its
# own preference model (`pair_loss`), its pairwise margin and the link that turns it into a probability
# (`pair_margin`, `link`: the confidence of the calibration metrics), a click's attraction (`attraction`), the
# regulariser it adds to any likelihood (`regularizer`, or None), per-batch statistics for the log
# (`batch_stats`) and the scalar reward the policy optimises (`scalar`).


class ScalarHead(nn.Linear):
    """BTRM: one reward r per input. Pairs are Bradley-Terry, P(c ≻ r) = σ(r_c − r_r) (TRL's RewardTrainer);
    as a click model's attraction it reads σ(r)."""

    outputs = ("reward",)

    def __init__(self, hidden: int, cfg: HeadConfig):
        super().__init__(hidden, 1)
        nn.init.normal_(self.weight, std=cfg.init_std)
        nn.init.zeros_(self.bias)

    def forward(self, pooled: Tensor) -> dict[str, Tensor]:
        return {"reward": super().forward(pooled)[:, 0]}

    @staticmethod
    def pair_loss(out: dict, chosen: Tensor, rejected: Tensor, cfg) -> tuple[Tensor, dict]:
        """−log σ(r_c − r_r − margin) (+ TRL's centring term), `cfg`: `reward_model.loss`."""
        r_c, r_r = out["reward"][chosen], out["reward"][rejected]
        margin = None if cfg.margin is None else torch.full_like(r_c, cfg.margin)
        return bt_loss(r_c, r_r, margin, cfg.center_rewards_coefficient), {}

    @staticmethod
    def pair_margin(out: dict, chosen: Tensor, rejected: Tensor) -> Tensor:
        return out["reward"][chosen] - out["reward"][rejected]

    link = staticmethod(torch.sigmoid)

    @staticmethod
    def attraction(out: dict) -> Tensor:
        return btrm_attraction(out["reward"])

    @staticmethod
    def regularizer(out: dict, cfg) -> Optional[tuple[float, Tensor]]:
        return None

    @staticmethod
    def batch_stats(out: dict) -> dict[str, Tensor]:
        return {}

    @staticmethod
    def scalar(out: dict, kappa: float = 0.0, attraction: bool = False) -> Tensor:
        """r, or with `attraction` the click probability sigmoid(r) (`kappa` has no σ to weigh)."""
        return btrm_attraction(out["reward"]) if attraction else out["reward"]


class GaussianHead(nn.Linear):
    """GaRM: N(μ, σ²) per input (σ = softplus(raw) + σ_min, starting at σ_init). Pairs: P(c ≻ r) = Φ(z) plus
    λ·R(μ, σ) (`objectives.gaussian`); a click's attraction Φ(μ/√(1 + σ²)) (`objectives.click_model`)."""

    outputs = ("mu", "sigma")

    def __init__(self, hidden: int, cfg: HeadConfig):
        super().__init__(hidden, 2)
        nn.init.normal_(self.weight, std=cfg.init_std)
        nn.init.zeros_(self.bias)
        target = max(cfg.sigma_init - cfg.sigma_min, 1e-4)  # softplus⁻¹(σ_init − σ_min)
        with torch.no_grad():
            self.bias[1] = target + math.log(-math.expm1(-target))
        self.sigma_min = cfg.sigma_min

    def forward(self, pooled: Tensor) -> dict[str, Tensor]:
        out = super().forward(pooled)
        return {"mu": out[:, 0], "sigma": sigma_from_raw(out[:, 1], self.sigma_min)}

    @staticmethod
    def pair_loss(out: dict, chosen: Tensor, rejected: Tensor, cfg) -> tuple[Tensor, dict]:
        """NLL + λ·R (`objectives.gaussian.garm_loss`), `cfg`: `reward_model.loss`."""
        mu, sigma = out["mu"], out["sigma"]
        kwargs = {"z_clamp": cfg.z_clamp} if cfg.likelihood == "probit" else {"num_samples": cfg.mc_samples}
        return garm_loss(mu[chosen], sigma[chosen], mu[rejected], sigma[rejected],
                         lam=getattr(cfg.variance_reg, "lambda"), likelihood=cfg.likelihood,
                         regularizer=cfg.variance_reg.kind, **kwargs)

    @staticmethod
    def pair_margin(out: dict, chosen: Tensor, rejected: Tensor) -> Tensor:
        mu, sigma = out["mu"], out["sigma"]
        return garm_z(mu[chosen], sigma[chosen], mu[rejected], sigma[rejected])

    link = staticmethod(torch.special.ndtr)

    @staticmethod
    def attraction(out: dict) -> Tensor:
        return garm_attraction(out["mu"], out["sigma"])

    @staticmethod
    def regularizer(out: dict, cfg) -> Optional[tuple[float, Tensor]]:
        """(λ, R) with R averaged over the given suggestions: the same term as the pairwise loss's."""
        reg = cfg.variance_reg
        return getattr(reg, "lambda"), regularization(out["mu"], out["sigma"], reg.kind)

    @staticmethod
    def batch_stats(out: dict) -> dict[str, Tensor]:
        sigma = out["sigma"].detach()
        return {"sigma_mean": sigma.mean(), "sigma_std": sigma.std(unbiased=False),
                "mu_std": out["mu"].detach().std(unbiased=False)}

    @staticmethod
    def scalar(out: dict, kappa: float = 0.0, attraction: bool = False) -> Tensor:
        """μ − κσ (SPEC 5.5, `rewards.garm.kappa`), or with `attraction` Φ((μ − κσ)/√(1 + σ²))."""
        score = out["mu"] - kappa * out["sigma"]
        return garm_attraction(score, out["sigma"]) if attraction else score


HEADS = {"garm": GaussianHead, "btrm": ScalarHead}  # each of `KINDS` (reward_model.kinds) → its head
OUTPUTS = {kind: head.outputs for kind, head in HEADS.items()}  # what each kind's head returns per input


# --- build, save, load --------------------------------------------------------------------------------


def build_reward_model(kind: str, backbone_cfg, head: HeadConfig, cache_dir, seed: int = 0) -> RewardModel:
    """A fresh reward model: registry backbone (LoRA or full fine-tuning as configured) + new head."""
    backbone, tok = load_backbone(backbone_cfg, cache_dir, seed=seed)
    if backbone_cfg.lora is None:
        for p in backbone.parameters():
            p.requires_grad_(True)
    return RewardModel(backbone, tok, kind, head)


def _plain(cfg) -> dict:
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else dict(cfg)


def save_reward_model(model: RewardModel, path, backbone_cfg, seed: int = 0, extra: Optional[dict] = None) -> Path:
    """Write `reward_model.json`, `head.safetensors`, and `adapter.safetensors` (LoRA) or
    `backbone.safetensors` (full fine-tuning) into the folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone_dict = _plain(backbone_cfg)
    lora = backbone_dict.get("lora") is not None
    if lora:
        from peft import get_peft_model_state_dict  # lazy: importing peft loads bitsandbytes (extra)

        weights = get_peft_model_state_dict(model.backbone)
    else:
        weights = model.backbone.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()},
              path / ("adapter.safetensors" if lora else "backbone.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, path / "head.safetensors")
    meta = {"kind": model.kind, "backbone": backbone_dict, "head": asdict(model.cfg), "seed": seed,
            "weights": "adapter" if lora else "backbone", "examination": model.examination,
            "redundancy": model.redundancy, **(extra or {})}
    (path / "reward_model.json").write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path, cache_dir: Optional[str] = None, device: str = "cpu",
                      trust_remote_code: bool = False, merge: bool = True) -> RewardModel:
    """A reward model saved by `save_reward_model`, in eval mode on `device`.

    A loaded reward model is frozen, so with `merge` its LoRA adapters are folded into the backbone's
    weights (`merge_and_unload`): a forward pass then costs what the bare backbone's does, with the same
    scores to float round-off (tests/test_reward_model.py). A quantised backbone keeps them unmerged
    (folding a delta into 4-bit weights loses it); `merge=False` keeps them for further training.

    `cache_dir` is the registry's model cache (default: $CLICKS2PREF_CACHE or ~/.cache/clicks2pref),
    where the base weights of a LoRA model come from. `trust_remote_code` is the user's switch
    (`reward_model.backbone.trust_remote_code`): the folder's own metadata never turns it on.
    """
    path = Path(path)
    if not (path / "reward_model.json").is_file():
        raise ModelNotFoundError(f"'{path}' holds no reward_model.json; pass a folder written by stage=rm "
                                 f"(artifacts/rm/<key>/<kind>)")
    meta = json.loads((path / "reward_model.json").read_text())
    backbone = user_code_policy(dict(meta["backbone"]), trust_remote_code, str(path / "reward_model.json"),
                                "reward_model.backbone.trust_remote_code")
    backbone["lora"] = LoraConfig(**backbone["lora"]) if backbone.get("lora") else None
    backbone_cfg = ModelConfig(**backbone)
    cache_dir = cache_dir or os.environ.get("CLICKS2PREF_CACHE", "~/.cache/clicks2pref")
    head = HeadConfig(**{"normalize": False, **meta["head"]})  # models saved before `normalize` existed
    model = build_reward_model(meta["kind"], backbone_cfg, head, cache_dir, meta.get("seed", 0))
    if meta["weights"] == "adapter":
        from peft import set_peft_model_state_dict  # lazy: importing peft loads bitsandbytes (extra)

        result = set_peft_model_state_dict(model.backbone, load_file(path / "adapter.safetensors"))
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ModelNotFoundError(f"'{path}/adapter.safetensors' does not fit the backbone "
                                     f"(unexpected {unexpected[:3]}); was it saved with another backbone?")
        if merge and not backbone_cfg.quantization:
            model.backbone = model.backbone.merge_and_unload()
    else:
        model.backbone.load_state_dict(load_file(path / "backbone.safetensors"))
    model.head.load_state_dict(load_file(path / "head.safetensors"))
    model.examination = meta.get("examination")
    model.redundancy = meta.get("redundancy")
    return model.to(device).eval()
