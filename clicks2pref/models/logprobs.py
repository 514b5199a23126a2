"""Token log-probabilities of completions given chat prompts: shared by the GRPO loss and the `ppl` term.

A row is the left-padded prompt followed by the right-padded completion, exactly as `model.generate`
produced it, so log-probs of sampled completions and of re-tokenised logged panels line up. Only the
completion positions' logits are materialised (`logits_to_keep`), divided by the sampling temperature
as TRL does before the log-softmax.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def pad_prompt_completion(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, completion_mask): prompts left-padded, completions right-padded."""
    width = max(len(p) for p in prompts)
    length = max(max((len(c) for c in completions), default=0), 1)
    ids = torch.full((len(prompts), width + length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, width - len(p):width] = torch.tensor(list(p), dtype=torch.long)
        attention[i, width - len(p):width] = 1
        if len(c):
            ids[i, width:width + len(c)] = torch.tensor(list(c), dtype=torch.long)
            attention[i, width:width + len(c)] = 1
            completion_mask[i, :len(c)] = 1
    return ids, attention, completion_mask


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids, attention_mask) of token rows left-padded to the longest (prompts)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of token rows right-padded to the longest (completions)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


def completion_logps(model, input_ids: Tensor, attention_mask: Tensor, n_completion: int,
                     temperature: float = 1.0, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each of the last `n_completion` tokens (B, n_completion), and their entropy if asked.

    Gradients flow when called under grad (the GRPO loss); wrap in `torch.no_grad()` for old/ref log-probs.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n_completion + 1).logits
    return token_logps(logits[:, :-1], input_ids[:, -n_completion:], temperature, entropy)  # t predicts t + 1


def token_logps(logits: Tensor, targets: Tensor, temperature: float = 1.0, entropy: bool = False
                ) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each target under its position's logits (tempered in fp32), and the entropy if asked."""
    log_probs = (logits.float() / temperature).log_softmax(-1)
    logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(log_probs.exp() * log_probs).sum(-1)
    return logps, ent


def mean_nll(logps: Tensor, completion_mask: Tensor) -> Tensor:
    """Mean token NLL (log-perplexity) of each completion over its active tokens."""
    mask = completion_mask.to(logps.dtype)
    return -(logps * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
