"""A per-suggestion score cache keyed by (conversation, suggestion), shared by reward components and the rm
stage's evaluations: the same suggestion in the same conversation goes through a model once."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from torch import Tensor


def context_key(context: list[dict]) -> str:
    """A conversation's turns as one exact string (the cache's key; `data.pairs.context_key` is a short hash)."""
    return json.dumps([[t["role"], t["content"]] for t in context], ensure_ascii=False)


@dataclass
class SuggestionScorer:
    """Per-suggestion scores with a cache keyed by (context, suggestion): a GRPO group repeats suggestions,
    and probe contexts recur, so each distinct pair goes through the reward model once."""

    # (contexts, suggestions) -> one score each, or {output name: one value each} (a reward model's head
    # outputs, cached before κ or a click link so that components differing only in those share one pass)
    score_fn: Callable[[list[list[dict]], list[str]], Union[Tensor, dict[str, Tensor]]]
    max_cache: int = 100_000
    cache: dict = field(default_factory=dict)

    def __call__(self, batch) -> list[list[float]]:
        """Scores per panel of a `rewards.base.RewardBatch` (its `contexts` and parsed `panels`)."""
        contexts = [c for c, panel in zip(batch.contexts, batch.panels) for _ in panel]
        values = iter(self.lookup(contexts, [s for panel in batch.panels for s in panel]))
        return [[next(values) for _ in panel] for panel in batch.panels]

    def lookup(self, contexts: Sequence[list[dict]], suggestions: Sequence[str]) -> list:
        """One score (or {output name: value}) per (context, suggestion), scoring only pairs not seen before."""
        context_keys: dict[int, str] = {}  # a context repeated per suggestion is keyed once
        for c in contexts:
            if id(c) not in context_keys:
                context_keys[id(c)] = context_key(c)
        keys = [(context_keys[id(c)], s) for c, s in zip(contexts, suggestions)]
        todo = {}
        for key, context, s in zip(keys, contexts, suggestions):
            if key not in self.cache:
                todo.setdefault(key, (context, s))
        known = {k: self.cache[k] for k in keys if k in self.cache}
        if todo:
            items = list(todo.values())
            scores = self.score_fn([c for c, _ in items], [s for _, s in items])
            new = dict(zip(todo, per_item(scores)))
            known.update(new)
            if len(self.cache) + len(new) > self.max_cache:
                self.cache.clear()
            self.cache.update(new)
        return [known[k] for k in keys]


def per_item(scores: Union[Tensor, dict[str, Tensor]]) -> list:
    """A float per item, or a {name: float} per item from a dict of per-item tensors."""
    if isinstance(scores, dict):
        columns = {k: v.tolist() for k, v in scores.items()}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return [float(x) for x in scores]
