"""Reward-model scoring that runs each distinct conversation through the backbone once.

A GRPO batch asks a reward model about G × K suggestions per conversation, and the conversation
(~100 tokens with the chat template) is far longer than a suggestion (~15). For a chat-template RM
read at the last token (`clicks2pref.models.reward_heads.RewardModel`, `pooling: last`) the
conversation's key/value cache is computed once and every suggestion continues from it: the same
numbers as `RewardModel.rewards` (to float rounding) at a fraction of the cost. Any other model, and
any input the RM would truncate, goes through the model's own `rewards`.
"""
from __future__ import annotations

import copy
import inspect
from typing import Sequence

import torch
from torch import Tensor

from clicks2pref.models.placement import on_device
from clicks2pref.models.reward_heads import OUTPUTS, RewardModel, scalar_rewards
from clicks2pref.rewards.base import context_key


def supports_shared_prefix(model) -> bool:
    return isinstance(model, RewardModel) and model.chat and model.cfg.pooling == "last"


def _cache_kwarg(backbone) -> str:
    """The forward argument that takes a KV cache: `cache` in recent transformers, `past_key_values` before."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def rm_rewards(model, contexts: Sequence[list[dict]], suggestions: Sequence[str], kappa: float = 0.0,
               batch_size: int = 32, attraction: bool = False) -> Tensor:
    """`model.rewards(contexts, suggestions, kappa, batch_size, attraction)`, sharing each conversation's
    forward pass."""
    if not supports_shared_prefix(model):
        return model.rewards(contexts, suggestions, kappa=kappa, batch_size=batch_size, attraction=attraction)
    return scalar_rewards(rm_outputs(model, contexts, suggestions, batch_size), model.kind, kappa, attraction).float()


@torch.no_grad()
def rm_outputs(model, contexts: Sequence[list[dict]], suggestions: Sequence[str], batch_size: int = 32
               ) -> dict[str, Tensor]:
    """`model.score(contexts, suggestions, batch_size)`: the head's outputs per suggestion ({"reward"} or
    {"mu", "sigma"}), before κ or a click link is applied, so one pass serves every κ."""
    if not supports_shared_prefix(model):
        return model.score(contexts, suggestions, batch_size)
    out = {name: torch.empty(len(suggestions), dtype=torch.float32) for name in OUTPUTS[model.kind]}
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(context_key(c), []).append(i)
    fallback: list[int] = []
    was_training = model.training
    model.eval()
    model = on_device(model)
    device = model.head.weight.device
    pad = model.tokenizer.pad_token_id
    cache_arg = _cache_kwarg(model.backbone)
    for idx in groups.values():
        segs = [model._segments(contexts[i], suggestions[i]) for i in idx]
        prefix = segs[0][0]
        ok = [j for j, (p, s, t) in enumerate(segs) if p and p == prefix and not t and s
              and len(p) + len(s) <= model.cfg.max_length]
        fallback += [idx[j] for j in range(len(idx)) if j not in set(ok)]
        if not ok:
            continue
        ids = torch.tensor([prefix], device=device)
        first = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = first.cache if getattr(first, "cache", None) is not None else first.past_key_values
        for start in range(0, len(ok), batch_size):
            chunk = ok[start:start + batch_size]
            suffixes = [segs[j][1] for j in chunk]
            width = max(len(s) for s in suffixes)
            sfx = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=device)
            mask = torch.tensor([[1] * (len(prefix) + len(s)) + [0] * (width - len(s)) for s in suffixes],
                                device=device)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            hidden = model.backbone(input_ids=sfx, attention_mask=mask, use_cache=True,
                                    **{cache_arg: past}).last_hidden_state
            last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
            pooled = hidden[torch.arange(len(chunk), device=device), last]
            rows = torch.tensor([idx[j] for j in chunk])
            for name, v in model.head_outputs(pooled).items():
                out[name][rows] = v.float().cpu()
    model.train(was_training)
    if fallback:
        rows = torch.tensor(fallback)
        for name, v in model.score([contexts[i] for i in fallback], [suggestions[i] for i in fallback],
                                   batch_size).items():
            out[name][rows] = v.float().cpu()
    return out
