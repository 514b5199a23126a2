"""Diversity-aware assembly: candidate suggestions of one context -> a three-suggestion SFT target.

Paper stage 2(c). Candidates are walked best first; one is taken unless it breaks a rule (length,
question form, a near-copy of the question just asked) or is too close to one already taken: MiniLM
cosine above `max_cosine` or word n-gram overlap above `max_ngram_overlap`. A context whose walk
ends with fewer than `k` suggestions yields no example, and the report says why. With
`enabled: false` the first `k` distinct candidates are taken as they come (the "assembly off" row of
Table 3). Its config, `AssemblyConfig` (`sft.assembly`), lives in `clicks2pref.config.sft`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Protocol, Sequence

import numpy as np

from clicks2pref.config.sft import AssemblyConfig
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.sft_data import normalize
from clicks2pref.models.registry import load_sentence_embedder

_WORD = re.compile(r"[a-z0-9']+")
QUESTION_WORDS = frozenset("what how why when where which who whose is are can could should would will do does did "
                           "was were has have may might".split())
SHORT_REASONS = ("no_candidates", "fewer_than_k_candidates", "rejected_by_rules", "rejected_as_similar")


class Embedder(Protocol):
    def cosine(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...


class SentenceEmbedder:
    """Cosine of L2-normalised sentence-transformers embeddings, cached per string."""

    def __init__(self, model, batch_size: int = 128):
        self.model, self.batch_size, self.cache = model, batch_size, {}

    def prefetch(self, texts) -> None:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            vecs = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            self.cache.update(zip(new, vecs.astype(np.float32)))

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        self.prefetch([*a, *b])
        va, vb = np.stack([self.cache[t] for t in a]), np.stack([self.cache[t] for t in b])
        return np.clip(va @ vb.T, -1.0, 1.0).astype(float)


class LexicalEmbedder:
    """Cosine of binary bag-of-words vectors: |A∩B| / sqrt(|A||B|). No model, for fast tests."""

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        wa, wb = [set(_WORD.findall(t.lower())) for t in a], [set(_WORD.findall(t.lower())) for t in b]
        return np.array([[len(x & y) / np.sqrt(len(x) * len(y)) if x and y else 0.0 for y in wb]
                         for x in wa]).reshape(len(a), len(b))


def build_embedder(cfg: AssemblyConfig) -> Embedder:
    if cfg.similarity == "lexical":
        return LexicalEmbedder()
    if cfg.similarity == "minilm":
        return SentenceEmbedder(load_sentence_embedder(cfg.embedder))
    raise ValueError(f"sft.assembly.similarity '{cfg.similarity}' is not one of minilm, lexical")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(a: str, b: str, n: int = 2) -> float:
    """Shared word n-grams over those of the shorter text (0 when either has none)."""
    x, y = ngrams(a, n), ngrams(b, n)
    return len(x & y) / min(len(x), len(y)) if x and y else 0.0


def is_question(text: str) -> bool:
    words = text.strip().lower().split()
    return text.rstrip().endswith("?") or (bool(words) and words[0] in QUESTION_WORDS)


def rule_violation(text: str, cfg: AssemblyConfig) -> str | None:
    n = len(text.split())
    if n < cfg.min_words or n > cfg.max_words:
        return "length"
    if cfg.require_question and not is_question(text):
        return "not_question"
    return None


def assemble_panel(candidates: Sequence[str], asked: str | None, embedder: Embedder,
                   cfg: AssemblyConfig) -> tuple[list[str], Counter]:
    """Greedy pick of up to k candidates (best first); returns the picks and rejection counts by reason.

    Invariant (tested): no two picks have cosine > max_cosine or n-gram overlap > max_ngram_overlap.
    """
    rejected: Counter = Counter()
    seen, distinct = set(), []
    for c in candidates:  # exact (normalised) duplicates are never two suggestions of one panel
        key = normalize(c)
        if key and key not in seen:
            seen.add(key)
            distinct.append(c.strip())
        else:
            rejected["duplicate"] += 1
    if not cfg.enabled:
        return distinct[:cfg.k], rejected
    clean = []
    for c in distinct:
        reason = rule_violation(c, cfg)
        if reason:
            rejected[reason] += 1
        else:
            clean.append(c)
    if asked and clean:
        copy = embedder.cosine(clean, [asked])[:, 0] > cfg.max_context_cosine
        rejected["copies_question"] += int(copy.sum())
        clean = [c for c, bad in zip(clean, copy) if not bad]
    if not clean:
        return [], rejected
    cos = embedder.cosine(clean, clean)
    chosen: list[int] = []
    for i, c in enumerate(clean):
        if len(chosen) == cfg.k:
            break
        if chosen and max(cos[i, j] for j in chosen) > cfg.max_cosine:
            rejected["cosine"] += 1
        elif chosen and max(ngram_overlap(c, clean[j], cfg.ngram) for j in chosen) > cfg.max_ngram_overlap:
            rejected["ngram"] += 1
        else:
            chosen.append(i)
    return [clean[i] for i in chosen], rejected


def _last_user_turn(context: list[dict]) -> str | None:
    return next((t["content"] for t in reversed(context) if t["role"] == "user"), None)


def assemble(groups: list[dict], embedder: Embedder, cfg: AssemblyConfig) -> tuple[list[dict], dict]:
    """SFT examples `{"context", "target", "source", "group"}` from context groups, and the report.

    `source` is `teacher` when any chosen suggestion came from the teacher, else `click`. The report
    counts contexts, full panels, the reason each short one fell short (`no_candidates`,
    `fewer_than_k_candidates`, `rejected_by_rules`, `rejected_as_similar`) and every rejection.
    """
    if isinstance(embedder, SentenceEmbedder):  # one batched encode instead of one per group
        embedder.prefetch([c["text"] for g in groups for c in g["candidates"]]
                          + [q for g in groups if (q := _last_user_turn(g["context"]))])
    examples, short, rejected = [], Counter(), Counter()
    for g in groups:
        texts = [c["text"] for c in g["candidates"]]
        picks, why = assemble_panel(texts, _last_user_turn(g["context"]), embedder, cfg)
        rejected.update(why)
        if len(picks) == cfg.k:
            sources = {c["text"].strip(): c.get("source", "click") for c in g["candidates"]}
            source = "teacher" if any(sources.get(p) == "teacher" for p in picks) else "click"
            examples.append({"context": g["context"], "target": format_suggestions(picks), "source": source,
                             "group": g["group"]})
            continue
        n_distinct = len({normalize(t) for t in texts if normalize(t)})
        if n_distinct == 0:
            short["no_candidates"] += 1
        elif n_distinct < cfg.k:
            short["fewer_than_k_candidates"] += 1
        elif sum(why[r] for r in ("length", "not_question", "copies_question")) > n_distinct - cfg.k:
            short["rejected_by_rules"] += 1
        else:
            short["rejected_as_similar"] += 1
    report = {"contexts": len(groups), "full_panels": len(examples),
              "short_panels": {r: short[r] for r in SHORT_REASONS},
              "rejected": dict(sorted(rejected.items())), "enabled": cfg.enabled}
    return examples, report
