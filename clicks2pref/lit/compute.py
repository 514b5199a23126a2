"""The compute meter: what each policy optimiser spends, so results read as CTR against compute, not steps.

Counted inside a training step only (the monitor's probes and the held-out evaluation are the same for every
method and stay out), by forward pre-hooks on the models, so a count is what ran, padding included:

- `generated_tokens`: completion tokens the sampler kept (up to and including the end token);
- `sampling_tokens`: positions through the policy's forward passes while sampling (prefill plus one per row
  per decoding step; 0 on a vLLM engine, which the hooks do not see);
- `forward_tokens`: positions through every other forward pass of the policy or its reference (log-probs
  for the loss, the reference, the old policy);
- `backward_tokens`: the part of `forward_tokens` run with gradients, i.e. back-propagated;
- `reward_tokens`: positions through the reward components' own models (a cached score costs nothing);
- `seconds`: wall time of the training steps.

A position is one token of one row of a forward call's `input_ids`. Per step and in total, logged as
`<prefix>/compute/<name>` and `<prefix>/compute/total_<name>`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Optional

import torch
from torch import nn

COUNTERS = ("generated_tokens", "sampling_tokens", "forward_tokens", "backward_tokens", "reward_tokens", "seconds")


@dataclass
class Compute:
    generated_tokens: int = 0
    sampling_tokens: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    reward_tokens: int = 0
    seconds: float = 0.0

    def __sub__(self, other: "Compute") -> "Compute":
        return Compute(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


def positions(args: tuple, kwargs: dict) -> int:
    """Rows × tokens of a forward call's `input_ids` (or `inputs_embeds`); 0 when it has neither."""
    x = kwargs.get("input_ids")
    if x is None and args and isinstance(args[0], torch.Tensor):
        x = args[0]
    if x is None and kwargs.get("inputs_embeds") is not None:
        return int(kwargs["inputs_embeds"].shape[0] * kwargs["inputs_embeds"].shape[1])
    return int(x.numel()) if isinstance(x, torch.Tensor) else 0


def innermost(model: nn.Module) -> nn.Module:
    """The module every path runs through once: PEFT's base model under the wrapper, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def reward_modules(reward) -> list[nn.Module]:
    """The torch models a composite reward's components score with (`component.model`, or its `.model`)."""
    found = []
    for component in getattr(reward, "components", {}).values():
        model = getattr(component, "model", None)
        model = model if isinstance(model, nn.Module) else getattr(model, "model", None)
        if isinstance(model, nn.Module) and all(model is not m for m in found):
            found.append(model)
    return found


class ComputeMeter:
    """Totals of `Compute`, fed by hooks while a step is open (`start_step` … `end_step`)."""

    def __init__(self):
        self.total = Compute()
        self.active = self._sampling = False
        self._start: Optional[Compute] = None
        self._t0 = 0.0
        self._handles: list = []
        self._watched: list[int] = []

    # --- what is watched ---------------------------------------------------------------------------
    def watch_policy(self, *models: Optional[nn.Module]) -> None:
        """Count the forward passes of the policy (and a frozen reference copy, if any)."""
        for model in models:
            if model is not None:
                self._hook(innermost(model), self._policy_forward)

    def watch_reward(self, reward) -> None:
        for model in reward_modules(reward):
            self._hook(model, self._reward_forward)

    def _hook(self, module: nn.Module, fn) -> None:
        if id(module) not in self._watched:  # a module set up twice (resumed fits) is counted once
            self._watched.append(id(module))
            self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._watched = [], []

    def _policy_forward(self, module, args, kwargs):
        if not self.active:
            return
        n = positions(args, kwargs)
        if self._sampling:
            self.total.sampling_tokens += n
        else:
            self.total.forward_tokens += n
            if torch.is_grad_enabled():
                self.total.backward_tokens += n

    def _reward_forward(self, module, args, kwargs):
        if self.active:
            self.total.reward_tokens += positions(args, kwargs)

    # --- what the optimiser reports ----------------------------------------------------------------
    @contextlib.contextmanager
    def sampling(self):
        """Forward passes inside count as sampling, not as training forward passes."""
        self._sampling = True
        try:
            yield
        finally:
            self._sampling = False

    def generated(self, completions: Iterable) -> None:
        if self.active:
            self.total.generated_tokens += sum(len(c) for c in completions)

    def start_step(self) -> None:
        self.active, self._start, self._t0 = True, Compute(**asdict(self.total)), time.perf_counter()

    def end_step(self, prefix: str) -> dict:
        """Close the step; its counts and the running totals under `<prefix>/compute/`."""
        self.total.seconds += time.perf_counter() - self._t0
        self.active = False
        step = self.total - (self._start or Compute())
        return {**{f"{prefix}/compute/{k}": float(v) for k, v in asdict(step).items()},
                **{f"{prefix}/compute/total_{k}": float(v) for k, v in asdict(self.total).items()}}

    def totals(self) -> dict:
        return asdict(self.total)

    def load(self, totals: dict) -> None:
        """Resume the totals a checkpoint saved."""
        self.total = Compute(**{k: totals.get(k, 0) for k in COUNTERS})
