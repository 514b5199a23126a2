"""The pairwise reward objective (SPEC 5.3, the paper's): clicked ≻ skipped pairs, each under the head's own
preference model: Bradley-Terry for a scalar reward (`bradley_terry.py`), Φ(z) + λ·R for GaRM (`gaussian.py`)."""
from __future__ import annotations

import torch
from torch import Tensor


def batch_loss(head, out: dict[str, Tensor], batch: dict, cfg) -> tuple[list[tuple[Tensor, Tensor]], dict]:
    """One term, the mean loss over the batch's pairs (`chosen`, `rejected` index `out`); `cfg`: reward_model.loss."""
    loss, parts = head.pair_loss(out, batch["chosen"], batch["rejected"], cfg)
    return [(loss, torch.tensor(float(len(batch["chosen"]))))], parts
