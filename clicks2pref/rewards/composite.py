"""The composite reward r = Σ_k w_k · r_k over the enabled components (SPEC 5.5).

`rewards` in the config names each component (null = off) and where the weights come from:
`fusion` (the fusion stage's `fusion_weights.json`), `equal` (1/K each: the `no_fusion` ablation) or
`config` (each component's own `weight`). Components are built from their `_target_` specs, then
`setup(resources)` gives them trained models and the reference scorer. The config, `RewardsConfig`,
lives in `clicks2pref.config.rewards` with every component's, torch-free (re-exported here).
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from clicks2pref.config.rewards import (COMPONENTS, NEEDS_RM, RULE_FAILING, WEIGHT_SOURCES,  # noqa: F401 (re-exported)
                                         RewardsConfig, enabled, needed_reward_models)
from clicks2pref.errors import ConfigError
from clicks2pref.rewards.base import RewardBatch, RewardResources, context_key

log = logging.getLogger(__name__)


def build_components(rewards, resources: RewardResources) -> dict:
    """name -> component, instantiated from its spec (minus `weight`) and set up."""
    names = enabled(rewards)
    if not names:
        raise ConfigError("rewards: every component is null; enable at least one (e.g. rewards=full)")
    return {name: build_component(rewards, name, resources) for name in names}


def build_component(rewards, name: str, resources: RewardResources):
    """One component from its spec (minus `weight`), set up; a null `examination`, `panel` or `redundancy` of
    its own takes the preset's (`rewards.examination`, `rewards.panel`, `rewards.redundancy`)."""
    spec = OmegaConf.to_container(rewards[name], resolve=True)
    spec.pop("weight", None)
    for shared in ("examination", "panel", "redundancy"):
        if shared in spec and spec[shared] is None:
            spec[shared] = rewards[shared]
    component = instantiate(spec)
    component.setup(resources)
    return component


def resolve_weights(rewards, names: list[str], fused: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """The weight of each enabled component under `rewards.weights`."""
    source = rewards.weights
    if source not in WEIGHT_SOURCES:
        raise ConfigError(f"rewards.weights: unknown {source!r}; accepted: {', '.join(WEIGHT_SOURCES)}")
    if source == "equal":
        return {n: 1.0 / len(names) for n in names}
    if source == "config":
        return {n: float(rewards[n].weight) for n in names}
    if fused is None or set(fused) != set(names):
        raise ConfigError(f"rewards.weights=fusion needs fused weights for {names}, got "
                          f"{sorted(fused) if fused else None}; run stage=fusion with the same rewards")
    return {n: float(fused[n]) for n in names}


class CompositeReward:
    """Weighted sum of component scores; `__call__` returns (total, {name: scores}) as float64 tensors.

    With `rule_constraint` (and the `rule` component on), a panel failing any rule is worth no more than
    the worst panel for the same conversation in the batch (a GRPO group): the rules act as a hard
    constraint whatever weight fusion gave them, instead of a term the other scores can outbid
    (`rule_failing`: how failing panels are placed, `group_floor`).
    """

    def __init__(self, components: Mapping[str, object], weights: Mapping[str, float], rule_constraint: bool = False,
                 rule_failing: str = "min"):
        missing = set(components) - set(weights)
        if missing:
            raise ValueError(f"no weight for reward components {sorted(missing)}")
        self.components, self.weights = dict(components), {n: float(weights[n]) for n in components}
        self.rule_constraint = rule_constraint and "rule" in self.components
        self.rule_failing = rule_failing

    def __call__(self, batch: RewardBatch) -> tuple[Tensor, Dict[str, Tensor]]:
        scores = {name: torch.as_tensor(c(batch), dtype=torch.float64).reshape(len(batch))
                  for name, c in self.components.items()}
        total = torch.zeros(len(batch), dtype=torch.float64)
        for name, s in scores.items():
            total = total + self.weights[name] * s
        if self.rule_constraint:
            total = group_floor(total, self.components["rule"].passes(batch), batch.contexts, self.rule_failing)
        return total, scores

    def describe(self) -> str:
        return " + ".join(f"{w:.3f}·{n}" for n, w in self.weights.items())


def group_floor(total: Tensor, passes: Tensor, contexts: list[list[dict]], failing: str = "min") -> Tensor:
    """Failing entries moved to the bottom of their group (entries with the same context).

    `min`: each at the group's minimum total (the failing panels tie). `below`: each at the minimum less its
    distance to the best failing total, so no failing entry scores above a passing one and the failing ones
    keep their own order (a group in which every panel fails still ranks its panels)."""
    if failing not in RULE_FAILING:
        raise ConfigError(f"unknown {failing!r}; accepted: {', '.join(RULE_FAILING)}", "rewards.rule_failing")
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        groups.setdefault(context_key(c), []).append(i)
    out = total.clone()
    for idx in groups.values():
        lowest = total[idx].min()
        fail = [i for i in idx if not bool(passes[i])]
        if not fail:
            continue
        best_failing = total[fail].max()
        for i in fail:
            out[i] = lowest if failing == "min" else lowest - (best_failing - total[i])
    return out
