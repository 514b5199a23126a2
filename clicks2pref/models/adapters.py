"""LoRA adapters folded into their base weights while a model only samples."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch


def _mergeable(model) -> list:
    """Active, unmerged LoRA layers over plain float `nn.Linear` weights (quantised bases are left alone:
    folding a delta into 4-bit weights loses it). Without peft loaded no model can hold adapters, and a bare
    model's sampling should not pay for importing it (and bitsandbytes with it)."""
    if "peft" not in sys.modules:
        return []
    from peft.tuners.lora import LoraLayer

    layers = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and module.active_adapters and not module.merged \
                and not module.disable_adapters:
            base = module.get_base_layer()
            if type(base) is torch.nn.Linear and base.weight.is_floating_point():
                layers.append(module)
    return layers


@contextmanager
def merged_adapters(model):
    """Sample from W + BA in one matmul per layer instead of W, A, B, a scale and an add.

    Decoding with unmerged adapters runs seven extra small matmuls and two elementwise passes per block;
    merged, a sampled token costs what the bare model's does. The base weights are copied first and
    restored exactly afterwards, so training continues from bit-identical weights (a plain unmerge would
    leave float round-off behind on every step).
    """
    layers = _mergeable(model)
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.merge()
        yield model
    finally:
        with torch.no_grad():
            for m, weight in zip(layers, saved):
                if m.merged:
                    m.unmerge()
                m.get_base_layer().weight.copy_(weight)
