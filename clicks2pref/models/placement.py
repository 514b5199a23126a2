"""Where models run outside a Lightning fit: sampling, scoring, evaluation.

Lightning places a model only while it trains (and moves it back to the CPU when the fit ends), so
everything else a stage does with a model follows `trainer.accelerator` through this module. The
device is process-wide state set once per run by `use_accelerator`; each inference entry point
(generation, teacher sampling, reward scoring, perplexities) calls `on_device` on its model.
"""
from __future__ import annotations

import torch

from clicks2pref.errors import ConfigError

_device = "cpu"


def use_accelerator(accelerator: str) -> str:
    """Set the inference device from the trainer's accelerator: `gpu`/`cuda` (or `auto` with one) -> cuda."""
    global _device
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but torch sees no CUDA device; use trainer=cpu")
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    _device = "cuda" if wants_gpu else "cpu"
    return _device


def on_device(model):
    """`model` on the inference device; a no-op when every parameter is already there (any index of that
    type, so a DDP rank's own GPU counts). Checks them all: a reward model whose 4-bit backbone was
    placed on the GPU by bitsandbytes at load still has its head on the CPU."""
    if all(p.device.type == _device for p in model.parameters()):
        return model
    return model.to(_device)
