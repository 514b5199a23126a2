"""CTR estimates with bootstrap confidence intervals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_mean(values, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Mean with a percentile bootstrap CI (scipy); a single value gets a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if x.size < 2 or np.all(x == x[0]):
        m = float(x.mean()) if x.size else float("nan")
        return Estimate(m, m, m, int(x.size))
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed))
    return Estimate(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high),
                    int(x.size))
