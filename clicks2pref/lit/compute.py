"""The compute meter: what each policy optimiser spends, so results read as CTR against compute, not steps.

Counted inside a training step only (the monitor's probes and the held-out evaluation are the same for every
method and stay out), by forward pre-hooks on each model's transformer body (`bodies`: the `PreTrainedModel`
that holds the embeddings and the blocks, under any PEFT wrapper, reward head or LM head), so every path into a
model is seen once: a policy's `generate` and log-prob passes, the reference under `disable_adapter()`, a
reward model's shared-conversation passes through its backbone and its full-pass fallback, the perplexity
reference. A score a cache already held runs no forward and costs nothing.

- `generated_tokens`: completion tokens the sampler kept (up to and including the end token);
- `sampling_tokens`: positions through the policy's forward passes while sampling (prefill plus one per row
  per decoding step; 0 on a vLLM engine, which the hooks do not see);
- `forward_tokens`: positions through every other forward pass of the policy or its reference (log-probs
  for the loss, the reference, the old policy, the `ppl` term's reference);
- `backward_tokens`: the part of `forward_tokens` run with gradients, i.e. back-propagated;
- `reward_tokens`: positions through the reward components' own models;
- `token_passes`: forward-equivalents, every position above counted 1 and each back-propagated one its model's
  backward weight more (`backward_weight`);
- `seconds`: wall time of the training steps.

A position is one token of one row that a forward call computes and its attention mask keeps: the new tokens
of the call (a pass that continues a KV cache computes only those), padding left out, so a count is the
tokenizer's count of what was read and does not depend on how rows happened to be batched. A call without a
mask counts all rows × tokens. Per step and in total, logged as `<prefix>/compute/<name>` and
`<prefix>/compute/total_<name>`.

The backward weight. A forward pass costs about 2N FLOPs per position for N weights; its backward costs 2N
for the gradients of the activations (needed through every block as soon as anything below is trainable)
plus 2T for the gradients of the T trainable weights (Kaplan et al. 2020's C ≈ 6N is the case T = N). So a
back-propagated position costs 1 + T/N forward-equivalents on top of its forward: 2 with full fine-tuning,
1 plus the adapters' share with LoRA (GRPO's r = 16 on SmolLM2-135M's seven projections: 4.9M of 139M
weights, 1.035), since the frozen matrices' weight gradients are never computed. Gradient checkpointing runs
the forward again during the backward: one more. `ComputeMeter(backward_weight=w)` fixes w for every model
instead (e.g. 2 to read LoRA at the full-fine-tuning weight).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Iterable, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

COUNTERS = ("generated_tokens", "sampling_tokens", "forward_tokens", "backward_tokens", "reward_tokens",
            "token_passes", "seconds")


@dataclass
class Compute:
    generated_tokens: int = 0
    sampling_tokens: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    reward_tokens: int = 0
    token_passes: float = 0.0
    seconds: float = 0.0

    def __sub__(self, other: "Compute") -> "Compute":
        return Compute(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


def positions(args: tuple, kwargs: dict) -> int:
    """Positions a forward call computes: rows × new tokens of its `input_ids` (or `inputs_embeds`), less those
    its 2-D attention mask marks as padding. The mask spans the cached positions too, so the new tokens are
    its last columns. 0 for a call with neither input."""
    x = kwargs.get("input_ids")
    if x is None and args and isinstance(args[0], torch.Tensor):
        x = args[0]
    if x is None and kwargs.get("inputs_embeds") is not None:
        x = kwargs["inputs_embeds"][..., 0]
    if not isinstance(x, torch.Tensor):
        return 0
    x = x if x.dim() > 1 else x.unsqueeze(0)
    rows, new = x.shape[0], x.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
        mask = args[1]
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == rows and mask.shape[1] >= new:
        return int(mask[:, mask.shape[1] - new:].count_nonzero())
    return rows * new


def innermost(model: nn.Module) -> nn.Module:
    """PEFT's base model under the wrapper, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def bodies(model: nn.Module) -> list[nn.Module]:
    """The transformer bodies every forward of `model` runs through once: the outermost `PreTrainedModel`s that
    are their own base model (a causal LM's `.model`, a reward model's backbone, a classifier's encoder); the
    model itself when it holds none (a plain `nn.Module`)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():  # parents come before their children
        if id(module) in inside:
            continue
        if isinstance(module, PreTrainedModel) and module.base_model is module:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found or [model]


def backward_weight(model: nn.Module) -> float:
    """Forward-equivalents a back-propagated position of `model` costs beyond its forward: 1 (activation
    gradients) + the trainable share of its weights (their gradients) + 1 when gradient checkpointing recomputes
    the forward. 2 for full fine-tuning, 1 + the adapters' share for LoRA."""
    params = {id(p): p for p in model.parameters()}.values()  # a tied weight once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return 1.0 + (trainable / total if total else 0.0)


def checkpointing(model: nn.Module) -> bool:
    """Whether gradient checkpointing is on in `model` (transformers' flag, on the blocks or the body)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def component_models(component) -> list[nn.Module]:
    """The torch models one reward component scores with: `component.model` (a reward model, or a wrapper whose
    `.model` is one, e.g. a hub classifier) and the `ppl` term's reference scorer's `.reference.model`."""
    found = []
    for holder in (component, getattr(component, "reference", None)):
        model = getattr(holder, "model", None)
        model = model if isinstance(model, nn.Module) else getattr(model, "model", None)
        if isinstance(model, nn.Module):
            found.append(model)
    return found


class ComputeMeter:
    """Totals of `Compute`, fed by hooks while a step is open (`start_step` … `end_step`).

    `backward_weight`: forward-equivalents per back-propagated position beyond its forward, for every model;
    None (the default) derives it from each model's trainable parameters (`backward_weight`)."""

    def __init__(self, backward_weight: Optional[float] = None):
        self.total = Compute()
        self.active = self._sampling = False
        self.fixed_backward_weight = backward_weight
        self._start: Optional[Compute] = None
        self._t0 = 0.0
        self._handles: list = []
        self._watched: list[int] = []

    # --- what is watched ---------------------------------------------------------------------------
    def watch_policy(self, *models: Optional[nn.Module]) -> None:
        """Count the forward passes of the policy (and a frozen reference copy, if any)."""
        for model in models:
            if model is not None:
                weight, recompute = self._weight(model)
                if any(p.requires_grad for p in model.parameters()):
                    log.info("compute meter: a back-propagated policy position weighs %.4g forward(s) beyond its "
                             "forward%s", weight, " (+1 recomputed under gradient checkpointing)" if recompute else "")
                self._watch(model, partial(self._policy_forward, weight, recompute))

    def watch_reward(self, reward) -> None:
        """Count the forward passes of the reward components' models. The `ppl` term's reference counts as the
        reference does (`forward_tokens`); a body already watched (GRPO's `ppl` reference is the policy under
        `disable_adapter()`, the `external` component may share the BTRM) is counted once, as first watched."""
        for component in getattr(reward, "components", {}).values():
            reference = getattr(getattr(component, "reference", None), "model", None)
            for model in component_models(component):
                kind = self._policy_forward if model is reference else self._reward_forward
                self._watch(model, partial(kind, *self._weight(model)))

    def _weight(self, model: nn.Module) -> tuple[float, bool]:
        """(backward weight, whether a pass in training mode recomputes its forward in the backward)."""
        if self.fixed_backward_weight is not None:
            return float(self.fixed_backward_weight), False
        return backward_weight(innermost(model)), checkpointing(model)

    def _watch(self, model: nn.Module, fn) -> None:
        for body in bodies(innermost(model)):
            if id(body) not in self._watched:  # a model set up twice (resumed fits, shared RMs) is counted once
                self._watched.append(id(body))
                self._handles.append(body.register_forward_pre_hook(fn, with_kwargs=True))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._watched = [], []

    def _policy_forward(self, weight, recompute, module, args, kwargs):
        if not self.active:
            return
        n = positions(args, kwargs)
        self.total.token_passes += n
        if self._sampling:
            self.total.sampling_tokens += n
            return
        self.total.forward_tokens += n
        if torch.is_grad_enabled():
            self.total.backward_tokens += n
            self.total.token_passes += (weight + (1.0 if recompute and module.training else 0.0)) * n

    def _reward_forward(self, weight, recompute, module, args, kwargs):
        """Reward models only score here: forward positions (a cached score runs none)."""
        if self.active:
            n = positions(args, kwargs)
            self.total.reward_tokens += n
            self.total.token_passes += n

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
