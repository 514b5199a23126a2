"""Skipping an optimiser step whose gradients are not finite, although its loss was.

A finite loss can still back-propagate inf or NaN (an overflow in low precision, an attention kernel's fully
masked padding rows). Nothing downstream stops it: gradient clipping divides every gradient by a NaN total
norm and the optimiser step writes NaN into every trained weight, while the logged loss looks normal, so the
run only fails stages later, far from the cause. The modules check the loss first (a non-finite loss skips
backward) and the gradients here; both count towards the same `max_nonfinite_steps`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from clicks2pref.lit.distributed import all_sum


def gradients_finite(params: Sequence[torch.nn.Parameter], trainer=None) -> bool:
    """Whether every gradient of `params` is finite on every process: a step is skipped everywhere or nowhere."""
    grads = [p.grad for p in params if p.grad is not None]
    device = params[0].device if len(params) else torch.device("cpu")  # where the collective expects it
    bad = torch.stack([~g.isfinite().all() for g in grads]).any().float() if grads else torch.zeros((), device=device)
    return float(all_sum(trainer, bad)) == 0.0


def drop_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Forget this step's gradients: optimisers leave a parameter without a gradient untouched."""
    for p in params:
        p.grad = None


def grad_scaler_active(trainer) -> bool:
    """16-bit AMP's GradScaler already skips steps with inf gradients (and lowers its scale); it must see them."""
    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    return getattr(plugin, "scaler", None) is not None
