"""LoRA adapters folded into their base weights while a model only samples.

A policy with unmerged adapters runs seven extra small matmuls and two elementwise passes per block for
every sampled token; merged, a token costs what the bare model's does. The merged weights W + s·BA live in
a persistent copy beside the model (`MergedCopy`, one per model): sampling points each adapted layer at
its merged weight, so nothing is cloned, merged or restored per step, and the copy is recomputed only when
an adapter's weights changed since (after an optimiser step). The training weights are never written, so
training continues from bit-identical weights.
"""
from __future__ import annotations

import sys
import weakref
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


def _adapters(layer) -> list[str]:
    return [a for a in layer.active_adapters if a in layer.lora_A]


def _versions(layer) -> tuple:
    """What the merged weight depends on: the base weight and each active adapter's factors and scale (an
    in-place optimiser update bumps a tensor's version)."""
    out = [id(layer.get_base_layer().weight), layer.get_base_layer().weight._version]
    for a in _adapters(layer):
        out += [layer.lora_A[a].weight._version, layer.lora_B[a].weight._version, layer.scaling[a]]
    return tuple(out)


class MergedCopy:
    """The merged weight W + s·BA of each adapted layer of one model, refreshed when the adapters change.

    Plain LoRA is one `addmm` into the kept buffer; other variants (DoRA, fan-in-fan-out) take peft's own
    `get_delta_weight`. It costs one weight-sized buffer per adapted layer (the linear layers' size)."""

    def __init__(self):
        self.weights: dict[int, torch.Tensor] = {}
        self.versions: dict[int, tuple] = {}

    @torch.no_grad()
    def refresh(self, layers: list) -> list[torch.Tensor]:
        out = []
        for layer in layers:
            key, version = id(layer), _versions(layer)
            base = layer.get_base_layer().weight
            merged = self.weights.get(key)
            if merged is None or merged.shape != base.shape or merged.dtype != base.dtype:
                merged = self.weights[key] = torch.empty_like(base)
                self.versions.pop(key, None)
            if self.versions.get(key) != (version, merged._version):  # stale, or written to since
                self._merge(layer, base, merged)
                self.versions[key] = (version, merged._version)
            out.append(merged)
        return out

    @staticmethod
    def _merge(layer, base: torch.Tensor, merged: torch.Tensor) -> None:
        adapters = _adapters(layer)
        plain = not getattr(layer, "fan_in_fan_out", False) and not getattr(layer, "lora_variant", {})
        if plain and len(adapters) == 1:
            a = adapters[0]
            torch.addmm(base, layer.lora_B[a].weight, layer.lora_A[a].weight, alpha=layer.scaling[a], out=merged)
            return
        merged.copy_(base)
        for a in adapters:
            merged += layer.get_delta_weight(a).to(merged.dtype)


_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@contextmanager
def merged_adapters(model):
    """Within the block, `model` computes with its adapters folded into the base weights (its merged copy,
    `MergedCopy`, brought up to date first); on exit every layer points at its own weights again."""
    layers = _mergeable(model)
    if not layers:
        yield model
        return
    copy = _COPIES.get(model)
    if copy is None:
        copy = _COPIES[model] = MergedCopy()
    merged = copy.refresh(layers)
    originals = [m.get_base_layer().weight.data for m in layers]
    try:
        for m, w in zip(layers, merged):
            m.get_base_layer().weight.data = w
            m.merged_adapters = _adapters(m)  # peft's forward then runs the base layer alone
        yield model
    finally:
        for m, w in zip(layers, originals):
            m.get_base_layer().weight.data = w
            m.merged_adapters = []
