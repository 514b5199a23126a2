"""Supervised fine-tuning loss: next-token cross-entropy on the target (assistant reply) tokens only.

Labels carry the token id at target positions and IGNORE_INDEX everywhere else (system, context,
instruction, chat markup, padding), the convention of Hugging Face and TRL's completion-only loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def prompt_completion_labels(prompt_ids: list[int], target_ids: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a prompt followed by its target: the loss sees the target tokens only."""
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + list(target_ids)


def masked_lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of token losses, number of target tokens); position t predicts labels[t + 1].

    Returning the sum lets callers average over every target token of a batch split across devices
    or micro-batches, so the mean does not depend on how the batch was split.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shift_labels != IGNORE_INDEX).sum()


def mean_masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean loss per target token (0 when there is none)."""
    total, n = masked_lm_loss(logits, labels)
    return total / torch.clamp(n, min=1)
