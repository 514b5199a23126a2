"""The one parser of policy output, used by the simulator, rewards, rules and evaluation.

The policy format is exactly K lines numbered `1.` .. `K.` (SPEC section 3). Serving is lenient
(numbered or bulleted lines are shown), the format check is strict.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ITEM = re.compile(r"^\s*(?:(\d+)\s*[.)]|[-*\u2022])\s*(.*\S)?\s*$")


@dataclass(frozen=True)
class Parsed:
    suggestions: list[str]
    well_formed: bool  # exactly `k` lines numbered 1..k and nothing else


def parse_suggestions(text: str, k: int = 3) -> Parsed:
    items, numbers, stray = [], [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _ITEM.match(line)
        if m is None:
            stray += 1
            continue
        numbers.append(int(m.group(1)) if m.group(1) else None)
        if m.group(2):
            items.append(m.group(2).strip())
    well_formed = stray == 0 and numbers == list(range(1, k + 1)) and len(items) == k
    return Parsed(items[:k], well_formed)


def format_suggestions(suggestions: list[str]) -> str:
    """The inverse of parse_suggestions: the target text SFT trains on."""
    return "\n".join(f"{i}. {s}" for i, s in enumerate(suggestions, 1))
