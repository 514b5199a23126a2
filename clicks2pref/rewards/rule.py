"""The rule reward: format and hygiene checks a designer can write down, scored in [−1, 1] (SPEC 5.5).

Checks, each passed (1) or failed (0):
  format     (panel)          exactly K lines numbered 1.–K. and nothing else (`Parsed.well_formed`)
  length     (per position)   min_words ≤ words ≤ max_words
  question   (per position)   ends with "?" or starts with a question word
  duplicate  (per position)   content-word overlap with an earlier suggestion ≤ duplicate_threshold
  copy       (per position)   content-word overlap with the user's last question ≤ copy_threshold
  clean      (per position)   letters / non-space characters ≥ min_letter_ratio (no garbage)
A position with no suggestion fails every per-position check. The score is 2·(weighted share of
checks passed) − 1; output with no parseable suggestion at all gets the hard floor `unparseable_score`.
A panel *passes* the rules when every check passes (the fusion stage's rule-pass constraint).
The overlap is Jaccard over content words, computed here: the rule must not borrow the simulator's
similarity, or it would leak the oracle's notion of a duplicate.

Its `_target_` config, `RuleRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

import re
from typing import Dict

import torch
from torch import Tensor

from clicks2pref.config.rewards import RuleRewardConfig
from clicks2pref.models.similarity import overlap
from clicks2pref.rewards.base import RewardBatch, last_user_turn

CHECKS = ("format", "length", "question", "duplicate", "copy", "clean")
QUESTION_WORDS = frozenset("what how why when where which who whom whose is are can could should would will do "
                           "does did was were has have may might".split())


def is_question(text: str) -> bool:
    words = text.strip().lower().split()
    return text.rstrip().endswith("?") or (bool(words) and words[0] in QUESTION_WORDS)


def letter_ratio(text: str) -> float:
    chars = re.sub(r"\s", "", text)
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


class RuleReward:
    def __init__(self, min_words: int = 3, max_words: int = 15, duplicate_threshold: float = 0.7,
                 copy_threshold: float = 0.7, min_letter_ratio: float = 0.6, unparseable_score: float = -1.0,
                 check_weights: Dict[str, float] | None = None):
        self.min_words, self.max_words = min_words, max_words
        self.duplicate_threshold, self.copy_threshold = duplicate_threshold, copy_threshold
        self.min_letter_ratio, self.unparseable_score = min_letter_ratio, unparseable_score
        weights = dict(check_weights) if check_weights is not None else dict(RuleRewardConfig().check_weights)
        unknown = set(weights) - set(CHECKS)
        if unknown:
            raise ValueError(f"rewards.rule.check_weights: unknown checks {sorted(unknown)}; "
                             f"accepted: {', '.join(CHECKS)}")
        self.check_weights = {c: float(weights.get(c, 0.0)) for c in CHECKS}
        if sum(self.check_weights.values()) <= 0:
            raise ValueError("rewards.rule.check_weights must give at least one check a positive weight")

    def setup(self, resources) -> None:
        pass

    def checks(self, context: list[dict], suggestions: list[str], well_formed: bool, k: int) -> dict[str, float]:
        """Share of positions passing each check (format: 0 or 1)."""
        asked = last_user_turn(context)
        passed = {c: 0.0 for c in CHECKS}
        passed["format"] = float(well_formed)
        for i, s in enumerate(suggestions[:k]):
            n = len(s.split())
            passed["length"] += self.min_words <= n <= self.max_words
            passed["question"] += is_question(s)
            passed["duplicate"] += all(overlap(s, t) <= self.duplicate_threshold for t in suggestions[:i])
            passed["copy"] += overlap(s, asked) <= self.copy_threshold
            passed["clean"] += letter_ratio(s) >= self.min_letter_ratio
        for c in CHECKS[1:]:
            passed[c] /= k
        return passed

    def details(self, batch: RewardBatch) -> list[dict[str, float]]:
        return [self.checks(c, p.suggestions, p.well_formed, batch.k) for c, p in zip(batch.contexts, batch.parsed)]

    def __call__(self, batch: RewardBatch) -> Tensor:
        total = sum(self.check_weights.values())
        out = []
        for parsed, passed in zip(batch.parsed, self.details(batch)):
            if not parsed.suggestions:
                out.append(self.unparseable_score)
                continue
            share = sum(self.check_weights[c] * passed[c] for c in CHECKS) / total
            out.append(2.0 * share - 1.0)
        return torch.tensor(out, dtype=torch.float64)

    def passes(self, batch: RewardBatch) -> Tensor:
        """True where every check passes (weighted or not)."""
        return torch.tensor([bool(p.suggestions) and all(v >= 1.0 for v in d.values())
                             for p, d in zip(batch.parsed, self.details(batch))])
