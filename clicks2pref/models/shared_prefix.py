"""Reward-model passes that run each distinct conversation through the backbone once.

A reward model reads one suggestion in its conversation, and the conversation (~100 tokens with the
chat template) is far longer than a suggestion (~15). GRPO asks about G × K suggestions per
conversation, and a training batch of whole panels about K per panel, so for a chat-template RM read at
the last token (`clicks2pref.models.reward_heads.RewardModel`, `pooling: last`) each conversation's
keys and values are computed once and each suggestion continues from them (`collate_shared`,
`forward_shared`). The tokens, positions and masks are the full pass's, so the numbers are too (to
float rounding), and the gradient reaches the conversation's tokens through the cache, summed over its
suggestions as in the full pass. Any other model, and any input the RM would truncate, takes the full
pass (`RewardModel.collate` and `forward`).
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from clicks2pref.models.kv_cache import cache_kwarg
from clicks2pref.models.placement import on_device
from clicks2pref.models.reward_heads import OUTPUTS, RewardModel, scalar_rewards
from clicks2pref.models.score_cache import SuggestionScorer, context_key


def supports_shared_prefix(model) -> bool:
    return isinstance(model, RewardModel) and model.chat and model.cfg.pooling == "last"


def shared_segments(model, context: list[dict], suggestion: str) -> Optional[tuple[list[int], list[int]]]:
    """(conversation ids, suggestion ids) when the full input is exactly their concatenation, else None."""
    prefix, suffix, tail = model._segments(context, suggestion)
    if prefix and suffix and not tail and len(prefix) + len(suffix) <= model.cfg.max_length:
        return prefix, suffix
    return None


def collate_shared(model, segs: Sequence[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
    """Inputs with each distinct conversation once, from items' (conversation ids, suggestion ids)
    (`shared_segments`): `prefix_ids`/`prefix_mask` [C, P] (right-padded), `prefix_index` [N] (item →
    its conversation), `suffix_ids`/`suffix_mask` [N, S] (right-padded)."""
    prefixes: dict[tuple[int, ...], int] = {}
    index = [prefixes.setdefault(tuple(p), len(prefixes)) for p, _ in segs]
    pad = model.tokenizer.pad_token_id

    def padded(rows):
        width = max(len(r) for r in rows)
        return (torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows]),
                torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]))

    prefix_ids, prefix_mask = padded(list(prefixes))
    suffix_ids, suffix_mask = padded([s for _, s in segs])
    return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "prefix_index": torch.tensor(index),
            "suffix_ids": suffix_ids, "suffix_mask": suffix_mask}


def forward_shared(model, batch: dict[str, Tensor], chunk: Optional[int] = None) -> dict[str, Tensor]:
    """The head's outputs per item of a `collate_shared` batch (with gradients when enabled).

    The conversations run at batch C; their cache is gathered to the N items, and each suggestion
    continues at its conversation's length (a right-padded conversation leaves masked holes, which the
    attention mask skips). The last suggestion token is pooled, as `RewardModel.forward` pools. With
    `chunk`, the suggestions continue `chunk` at a time, each chunk from its own copy of the cache, so the
    conversations still run once however many suggestions there are.
    """
    prefix_mask, index, suffix_mask = batch["prefix_mask"], batch["prefix_index"], batch["suffix_mask"]
    first = model.backbone(input_ids=batch["prefix_ids"], attention_mask=prefix_mask, use_cache=True)
    cache = getattr(first, cache_kwarg(model.backbone))
    n = index.shape[0]
    if chunk is None or n <= chunk:
        return _continue(model, cache, prefix_mask, index, batch["suffix_ids"], suffix_mask)
    parts = [_continue(model, copy.deepcopy(cache), prefix_mask, index[s:s + chunk], batch["suffix_ids"][s:s + chunk],
                       suffix_mask[s:s + chunk]) for s in range(0, n, chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _continue(model, cache, prefix_mask: Tensor, index: Tensor, suffix_ids: Tensor, suffix_mask: Tensor
              ) -> dict[str, Tensor]:
    """The suggestions `suffix_ids` continued from their conversations' cache (gathered in place by `index`)."""
    cache.batch_select_indices(index)
    mask = torch.cat([prefix_mask[index], suffix_mask], dim=1)
    positions = prefix_mask.sum(1)[index, None] + torch.arange(suffix_mask.shape[1], device=mask.device)[None]
    hidden = model.backbone(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_kwarg(model.backbone): cache}).last_hidden_state
    last = suffix_mask.sum(1) - 1
    return model.head_outputs(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])


def collate_items(model, items: Sequence[tuple[list[dict], str]], shared_prefix: bool = True) -> dict[str, Tensor]:
    """A training or validation batch. Items that split into conversation + suggestion take the shared
    layout (`collate_shared`, their batch rows in `shared_rows`), the rest (e.g. a context the model
    truncates) the full one (`input_ids`, `attention_mask`, rows in `full_rows`). Gradient checkpointing
    drops the cache in training, so with it every item takes the full layout."""
    backbone = model.backbone
    checkpointing = getattr(backbone, "is_activation_checkpointing", None)  # transformers ≥ 5.x's name
    if checkpointing is None:
        checkpointing = getattr(backbone, "is_gradient_checkpointing", False)
    share = shared_prefix and not checkpointing and supports_shared_prefix(model)
    segs = [shared_segments(model, c, s) for c, s in items] if share else [None] * len(items)
    shared = [i for i, seg in enumerate(segs) if seg is not None]
    if not shared:
        return model.collate(items)
    batch = collate_shared(model, [segs[i] for i in shared])
    batch["shared_rows"] = torch.tensor(shared)
    rest = sorted(set(range(len(items))) - set(shared))
    if rest:
        batch.update(model.collate([items[i] for i in rest]), full_rows=torch.tensor(rest))
    return batch


def forward_items(model, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The head's outputs for a `collate_items` batch, in item order, whichever layouts it holds."""
    if "prefix_ids" not in batch:
        return model(batch["input_ids"], batch["attention_mask"])
    out = forward_shared(model, batch)
    if "full_rows" not in batch:
        return out
    full = model(batch["input_ids"], batch["attention_mask"])
    order = torch.cat([batch["shared_rows"], batch["full_rows"]]).argsort()  # item i's place in cat(shared, full)
    return {k: torch.cat([out[k], full[k]])[order] for k in out}


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
    {"mu", "sigma"}), before κ or a click link is applied, so one pass serves every κ. One call: every
    distinct conversation runs once, then the suggestions continue from it `batch_size` at a time."""
    if not supports_shared_prefix(model):
        return model.score(contexts, suggestions, batch_size)
    out = {name: torch.empty(len(suggestions), dtype=torch.float32) for name in OUTPUTS[model.kind]}
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(context_key(c), []).append(i)
    segs = {i: shared_segments(model, contexts[i], suggestions[i]) for i in range(len(contexts))}
    shared = [i for idx in groups.values() for i in idx if segs[i] is not None]  # grouped by conversation
    fallback = [i for i in range(len(contexts)) if segs[i] is None]
    was_training = model.training
    model.eval()
    model = on_device(model)
    device = model.head.weight.device
    if shared:
        batch = collate_shared(model, [segs[i] for i in shared])
        for name, v in forward_shared(model, {k: t.to(device) for k, t in batch.items()}, chunk=batch_size).items():
            out[name][torch.tensor(shared)] = v.float().cpu()
    model.train(was_training)
    if fallback:
        rows = torch.tensor(fallback)
        for name, v in model.score([contexts[i] for i in fallback], [suggestions[i] for i in fallback],
                                   batch_size).items():
            out[name][rows] = v.float().cpu()
    return out


def cached_outputs(model, batch_size: int = 32) -> Callable[[Sequence[list[dict]], Sequence[str]], dict[str, Tensor]]:
    """`rm_outputs` of `model` behind a `SuggestionScorer` cache: evaluations that score the same suggestions
    more than once (the rm stage's calibration pairs, then its oracle check) run each once."""
    scorer = SuggestionScorer(partial(rm_outputs, model, batch_size=batch_size))

    def score(contexts: Sequence[list[dict]], suggestions: Sequence[str]) -> dict[str, Tensor]:
        rows = scorer.lookup(contexts, suggestions)
        return {name: torch.tensor([r[name] for r in rows], dtype=torch.float32) for name in OUTPUTS[model.kind]}

    return score
