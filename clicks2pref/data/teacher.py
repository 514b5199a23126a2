"""The teacher's candidates (paper stage 2(b)): its replies parsed into questions, ranked, and joined to the
clicked suggestions of each context group (the assembly's candidates)."""
from __future__ import annotations

from collections import Counter

from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.sft_data import normalize
from clicks2pref.models.generate import generate


def parse_candidate(text: str) -> str:
    """The question in one teacher reply: its numbered/bulleted item, else its first line."""
    items = parse_suggestions(text, 1).suggestions
    if items:
        return items[0].strip().strip('"').strip()
    return next((line.strip().strip('"').strip() for line in text.splitlines() if line.strip()), "")


def rank_samples(samples: list[str]) -> list[dict]:
    """Distinct samples (dedup by normalised text), most frequent first, then first produced."""
    counts, first, text = Counter(), {}, {}
    for i, s in enumerate(samples):
        key = normalize(s)
        if not key:
            continue
        counts[key] += 1
        first.setdefault(key, i)
        text.setdefault(key, s)
    return [{"text": text[k], "count": counts[k], "source": "teacher"}
            for k in sorted(counts, key=lambda k: (-counts[k], first[k]))]


def teacher_template(tcfg):
    return PromptTemplate(instruction=tcfg.instruction, system=tcfg.system)


def sample_candidates(model, tok, groups: list[dict], tcfg, seed: int) -> list[list[dict]]:
    """`num_candidates` teacher samples per group, parsed and ranked."""
    template = teacher_template(tcfg)
    n = tcfg.num_candidates
    outs = generate(model, tok, [build_messages(template, g["context"]) for g in groups], tcfg.generation,
                    num_return_sequences=n, seed=seed, desc="teacher sampling")
    return [rank_samples([parse_candidate(o) for o in outs[i * n:(i + 1) * n]]) for i in range(len(groups))]


def with_candidates(groups: list[dict], sampled: dict, keep_clicked: bool) -> list[dict]:
    """Groups whose candidates are the teacher's samples (`sampled`: group -> ranked candidates), after the
    clicked suggestions when `keep_clicked`."""
    return [{**g, "candidates": (list(g["candidates"]) if keep_clicked else []) + sampled.get(g["group"], [])}
            for g in groups]
