"""GSB (good / same / bad) of a policy against a reference on the same contexts (SPEC 5.6).

Per context: G if the policy's oracle CTR beats the reference's by more than `margin`, B if it trails
by more than `margin`, else S. GSB = (G − B) / (G + S + B) × 100, from −100 (always worse) to 100.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class GSB:
    good: int
    same: int
    bad: int

    @property
    def score(self) -> float:
        n = self.good + self.same + self.bad
        return 100.0 * (self.good - self.bad) / n if n else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "gsb": self.score}


def gsb(policy_ctr: Sequence[float], reference_ctr: Sequence[float], margin: float = 0.0) -> GSB:
    """GSB from paired per-context oracle CTRs (same contexts, same order)."""
    a, b = np.asarray(policy_ctr, dtype=float), np.asarray(reference_ctr, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"GSB needs paired contexts: {a.shape} vs {b.shape}")
    d = a - b
    return GSB(int((d > margin).sum()), int((np.abs(d) <= margin).sum()), int((d < -margin).sum()))
