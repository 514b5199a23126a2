"""The OOD regulariser: −max(0, logPPL_ref(y|x) − τ), with τ a quantile of logged panels' logPPL (SPEC 5.5).

logPPL_ref(y|x) is the mean token NLL of the completion (closing end-of-turn token included) given the
policy prompt, under the reference policy (GRPO's reference: the SFT model, LoRA adapters disabled).
Logged panels are what the reward models were trained on, so a completion the reference finds less
likely than `quantile` of them is out of the reward models' distribution and its reward untrustworthy.
τ is calibrated once from logged panels (`calibrate`), or fixed with `tau`. GRPO passes
`RewardBatch.ref_log_ppl` from the reference log-probs it computes for the KL term, so scoring costs
no extra forward pass there; elsewhere the component asks the reference scorer.

Its `_target_` config, `PerplexityRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.config.rewards import PerplexityRewardConfig  # noqa: F401 (re-exported)
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.placement import on_device
from clicks2pref.rewards.base import RewardBatch, context_key
from clicks2pref.models.logprobs import (completion_logps, left_padded, mean_nll, pad_prompt_completion,
                                         right_padded)
from clicks2pref.models.shared_prompt import shared_prompt_logps


class ReferenceScorer:
    """(contexts, completions) -> mean token NLL of each completion under a causal LM, on chat prompts.

    Completions of one conversation share its prompt (best-of-n scores n samples per context): each distinct
    prompt runs once per batch and its completions continue from its cache (`models.shared_prompt
    .shared_prompt_logps`), and a completion repeated in its conversation is scored once. A batch holds whole
    conversations, about `batch_size` completions. The values are the full pass's (`full_pass`) to float
    round-off. `reference_context` wraps every forward pass, e.g. a PEFT model's `disable_adapter` so the policy's
    own weights serve as the reference with no second copy.
    """

    def __init__(self, model, tokenizer, template: PromptTemplate, temperature: float = 1.0, batch_size: int = 16,
                 reference_context: Optional[Callable[[], contextlib.AbstractContextManager]] = None):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.temperature, self.batch_size = temperature, batch_size
        self.reference_context = reference_context or contextlib.nullcontext

    def completion_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    @torch.no_grad()
    def __call__(self, contexts: Sequence[list[dict]], completions: Sequence[str]) -> Tensor:
        conversations: dict[str, int] = {}  # context key -> its prompt's index
        first: list[list[dict]] = []
        pairs: dict[tuple[int, str], int] = {}  # (prompt, completion) -> its distinct item
        item_of = []
        for c, text in zip(contexts, completions):
            key = context_key(c)
            if key not in conversations:
                conversations[key] = len(first)
                first.append(c)
            item_of.append(pairs.setdefault((conversations[key], text), len(pairs)))
        prompts = chat_inputs(self.tokenizer, [build_messages(self.template, c) for c in first])
        items = list(pairs)
        targets = [self.completion_ids(text) for _, text in items]
        groups: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(items):
            groups.setdefault(p, []).append(i)
        values = torch.empty(len(items), dtype=torch.float64)
        self.model = on_device(self.model)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        with self.reference_context():
            for batch in self.batches(groups, prompts):
                idx = [i for p in batch for i in groups[p]]
                prompt_ids, prompt_mask = left_padded([prompts[p] for p in batch], pad)
                place = {p: n for n, p in enumerate(batch)}
                index = torch.tensor([place[items[i][0]] for i in idx])
                ids, mask = right_padded([targets[i] for i in idx], pad)
                logps = shared_prompt_logps(self.model, prompt_ids.to(device), prompt_mask.to(device),
                                            index.to(device), ids.to(device), mask.to(device), self.temperature)
                values[torch.tensor(idx)] = mean_nll(logps, mask.to(device)).double().cpu()
        self.model.train(was_training)
        return values[torch.tensor(item_of, dtype=torch.long)]

    def batches(self, groups: dict[int, list[int]], prompts: list[list[int]]) -> list[list[int]]:
        """Prompts by length in batches of whole groups, each batch about `batch_size` completions (a group larger
        than that is a batch of its own)."""
        out, batch, rows = [], [], 0
        for p in sorted(groups, key=lambda p: len(prompts[p])):
            if batch and rows + len(groups[p]) > self.batch_size:
                out.append(batch)
                batch, rows = [], 0
            batch.append(p)
            rows += len(groups[p])
        return out + ([batch] if batch else [])

    @torch.no_grad()
    def full_pass(self, contexts: Sequence[list[dict]], completions: Sequence[str]) -> Tensor:
        """The same values, each row prompt + completion in one forward pass (`batch_size` rows at a time): the
        definition `__call__` is checked against."""
        prompts = chat_inputs(self.tokenizer, [build_messages(self.template, c) for c in contexts])
        targets = [self.completion_ids(t) for t in completions]
        out = torch.empty(len(prompts), dtype=torch.float64)
        device = next(self.model.parameters()).device
        with self.reference_context():
            for start in range(0, len(prompts), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(prompts))))
                ids, attention, mask = pad_prompt_completion([prompts[i] for i in idx], [targets[i] for i in idx],
                                                             self.tokenizer.pad_token_id)
                logps, _ = completion_logps(self.model, ids.to(device), attention.to(device), mask.shape[1],
                                            self.temperature)
                out[torch.tensor(idx)] = mean_nll(logps, mask.to(device)).double().cpu()
        return out


def calibrate_tau(log_ppl: Sequence[float] | Tensor, quantile: float) -> float:
    """τ = the `quantile` of the logged panels' log-perplexities."""
    values = np.asarray(torch.as_tensor(log_ppl, dtype=torch.float64), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot calibrate rewards.ppl.tau: no finite log-perplexity among the logged panels")
    return float(np.quantile(values, quantile))


class PerplexityReward:
    def __init__(self, quantile: float = 0.95, tau: Optional[float] = None, calibration_panels: int = 64):
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"rewards.ppl.quantile must be in (0, 1], got {quantile}")
        self.quantile, self.tau, self.calibration_panels = quantile, tau, calibration_panels
        self.reference = None

    def setup(self, resources) -> None:
        self.reference = resources.reference

    def calibrate(self, contexts: Sequence[list[dict]], panels: Sequence[str]) -> float:
        """Set τ from logged panels (formatted texts) under the reference; returns τ."""
        self.tau = calibrate_tau(self.reference(list(contexts), list(panels)), self.quantile)
        return self.tau

    def log_ppl(self, batch: RewardBatch) -> Tensor:
        if batch.ref_log_ppl is not None:
            return batch.ref_log_ppl.double().cpu()
        if self.reference is None:
            raise RuntimeError("PerplexityReward needs a reference scorer (setup) or RewardBatch.ref_log_ppl")
        batch.ref_log_ppl = self.reference(batch.contexts, batch.completions)
        return batch.ref_log_ppl

    def __call__(self, batch: RewardBatch) -> Tensor:
        if self.tau is None:
            raise RuntimeError("rewards.ppl: τ is not calibrated; call calibrate() or set rewards.ppl.tau")
        return -(self.log_ppl(batch) - self.tau).clamp(min=0.0)


def logged_panels(records: list[dict], n: int, seed: int) -> tuple[list[list[dict]], list[str]]:
    """Up to n distinct logged panels (context, formatted text), a seeded sample: τ's calibration set."""
    panels: dict = {}
    for r in records:
        panels.setdefault((context_key(r["context"]), tuple(r["suggestions"])), r)
    keys = sorted(panels)
    random.Random(seed).shuffle(keys)
    chosen = [panels[k] for k in keys[:n]]
    return [r["context"] for r in chosen], [format_suggestions(r["suggestions"]) for r in chosen]
