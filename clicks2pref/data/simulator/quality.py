"""What real users skip: the additive logit penalties in a suggestion's attraction."""
from __future__ import annotations

import re

import numpy as np

from clicks2pref.config.simulator import QualityConfig

QUESTION_WORDS = frozenset("what how why when where which who whom whose is are can could should would will do "
                           "does did was were has have may might".split())


def is_question(text: str) -> bool:
    words = text.strip().lower().split()
    return text.rstrip().endswith("?") or (bool(words) and words[0] in QUESTION_WORDS)


def letter_ratio(text: str) -> float:
    chars = re.sub(r"\s", "", text)
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def quality_logits(suggestions: list[str], sim_to_asked: np.ndarray, sim_within: np.ndarray,
                   cfg: QualityConfig) -> np.ndarray:
    """Penalty per suggestion (0 for a clean one): `suggestion_penalties` + `duplicate_penalties`.

    sim_to_asked[k]: similarity of suggestion k to the question the user already asked;
    sim_within[k, j]: similarity between suggestions k and j of the same panel (only j < k counts:
    the later of two duplicates is the one users skip).
    """
    return suggestion_penalties(suggestions, sim_to_asked, cfg) + duplicate_penalties(sim_within, cfg)


def suggestion_penalties(suggestions: list[str], sim_to_asked: np.ndarray, cfg: QualityConfig) -> np.ndarray:
    """The penalties of each suggestion on its own, wherever it is shown."""
    out = np.zeros(len(suggestions))
    for k, s in enumerate(suggestions):
        n = len(s.split())
        if letter_ratio(s) < cfg.min_letter_ratio:
            out[k] += cfg.garbage_penalty
        if not is_question(s):
            out[k] += cfg.not_question_penalty
        if n < cfg.min_words or n > cfg.max_words:
            out[k] += cfg.bad_length_penalty
        if sim_to_asked[k] > cfg.copy_threshold:
            out[k] += cfg.copy_penalty
    return out


def duplicate_penalties(sim_within: np.ndarray, cfg: QualityConfig) -> np.ndarray:
    """The penalty of position k for repeating a suggestion shown above it: sim_within [..., K, K] in the order
    shown (leading axes: panels or users, each in its own order), out [..., K]."""
    k = sim_within.shape[-1]
    above = np.tril(np.ones((k, k), dtype=bool), -1)  # j < k
    repeats = ((sim_within > cfg.duplicate_threshold) & above).any(axis=-1)
    return np.where(repeats, cfg.duplicate_penalty, 0.0)
