"""A KV cache for sampling whose keys and values are written in place into a buffer sized for the whole generation.

`transformers`' `DynamicCache` grows each layer by `torch.cat` at every decoding step, which copies the layer's
whole cache: at batch 64 on SmolLM2 that is a quarter of a sampling step on a CPU. `preallocated_cache` gives a
`DynamicCache` whose layers hold one buffer of `capacity` positions (prompt width + new tokens) and return views
of its filled part, so a step writes one position per layer and copies nothing. The keys, values, masks and
positions are the dynamic cache's, so samples are the same; only the copies are gone. A layer that would
overflow its buffer doubles it (one copy), so a wrong capacity costs time, never correctness.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def cache_kwarg(model) -> str:
    """The argument of `forward` and `generate` that takes a KV cache, and the output field that returns it:
    `cache` in recent transformers, `past_key_values` before (a GPU image may carry an older release)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class PreallocatedLayer(DynamicLayer):
    """`DynamicLayer` over a preallocated buffer: `keys`/`values` are views of its first `length` positions."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        self._keys = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self.length = 0
        self.is_initialized = True
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self._keys[:, :, :self.length]
        self.values = self._values[:, :, :self.length]

    def _grow(self, needed: int) -> None:
        self.capacity = max(needed, 2 * self.capacity)
        keys = self._keys.new_empty(*self._keys.shape[:2], self.capacity, self._keys.shape[-1])
        values = self._values.new_empty(*self._values.shape[:2], self.capacity, self._values.shape[-1])
        keys[:, :, :self.length] = self.keys
        values[:, :, :self.length] = self.values
        self._keys, self._values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self.length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._refresh()

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep the rows `indices` (row r of the result is row indices[r]). Rows that finished decoding leave the
        batch this way; only the rows that change place are copied (their filled positions, through a small
        temporary), and the buffer is cut to the new batch in place, so dropping a few rows of a large batch costs a
        few rows' copies, not the cache's. Growing the batch copies it whole."""
        if not self.is_initialized:
            return
        indices = indices.to(self._keys.device)
        n = len(indices)
        if n > self._keys.shape[0]:
            keys = self._keys.new_empty(n, *self._keys.shape[1:])
            values = self._values.new_empty(n, *self._values.shape[1:])
            keys[:, :, :self.length] = self.keys.index_select(0, indices)
            values[:, :, :self.length] = self.values.index_select(0, indices)
            self._keys, self._values = keys, values
        else:
            moved = (indices != torch.arange(n, device=indices.device)).nonzero().squeeze(1)
            if len(moved):
                source = indices[moved]
                self._keys[moved, :, :self.length] = self.keys.index_select(0, source)
                self._values[moved, :, :self.length] = self.values.index_select(0, source)
            self._keys, self._values = self._keys[:n], self._values[:n]
        self._refresh()


def preallocated_cache(model, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `model` whose full-attention layers preallocate `capacity` positions (sliding-window
    layers, which drop old positions, keep `transformers`' own layer)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
