"""How many panels per context an evaluation needs: the variance split of panel CTRs.

A policy's CTR on a context is the mean of its k sampled panels' oracle CTRs. Across contexts that mean varies
for two reasons: contexts differ (the between-context variance σ²_b, which no number of panels removes) and a
context's k panels are a sample (the within-context variance σ²_w, divided by k). With C contexts,

    Var(mean CTR) = (σ²_b + σ²_w / k) / C,

so once σ²_w / k is small against σ²_b, more panels buy nothing: only more contexts (or topics) would. A paired
difference between two policies is measured on the same contexts with panel j of each drawn from the same random
numbers (`models.sampling.row_uniforms`), so its split is the split of the per-panel differences a_cj − b_cj:
the coupling lowers σ²_w of the difference, and the contexts' shared difficulty cancels from σ²_b.

`variance_split` is what the evaluate stage stores (a measurement); `panels_for` turns it, with a paired CI's
observed half-width (which carries the CI's own clustering and level), into the panels per context a target
half-width needs (what the report shows).
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional

import numpy as np


def variance_split(sample_ctr) -> dict:
    """{"between", "within", "contexts", "panels"} of panel CTRs [C, k]: σ²_w the mean over contexts of the
    panels' sample variance, σ²_b the variance of the context means less σ²_w / k (method of moments, at least 0).
    With one panel per context σ²_w is unknown (None) and `between` is the context means' variance."""
    x = np.asarray(sample_ctr, dtype=float)
    contexts, panels = x.shape if x.ndim == 2 else (0, 0)
    if contexts < 2:
        return {"between": None, "within": None, "contexts": contexts, "panels": panels}
    total = float(x.mean(axis=1).var(ddof=1))
    if panels < 2:
        return {"between": total, "within": None, "contexts": contexts, "panels": panels}
    within = float(x.var(axis=1, ddof=1).mean())
    return {"between": max(total - within / panels, 0.0), "within": within, "contexts": contexts, "panels": panels}


def paired_split(a, b) -> Optional[dict]:
    """`variance_split` of the per-panel differences a_cj − b_cj of two policies' panel CTRs on the same contexts
    (panel j of each from the same random numbers), or None when their panels do not pair (different shapes)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return variance_split(a - b) if a.shape == b.shape else None


def variance_measurements(results: dict, policies: list[str]) -> dict:
    """What the evaluate stage stores: the split of each policy's panel CTRs (`sample_ctr`) and of each pair's
    per-panel differences (later − earlier in `policies`, panel j against panel j)."""
    named = [p for p in policies if "sample_ctr" in results.get(p, {})]
    pairs = [(a, b) for i, b in enumerate(named) for a in named[i + 1:]]
    return {"policies": {p: variance_split(results[p]["sample_ctr"]) for p in named},
            "pairs": [{"policy": a, "against": b, **split} for a, b in pairs
                      if (split := paired_split(results[a]["sample_ctr"], results[b]["sample_ctr"])) is not None]}


def panels_for(split: dict, half_width: float, target: float, level: float) -> dict:
    """From a paired difference's split and its CI's observed half-width at k = `split["panels"]` panels: the share
    of the CI's variance that more panels cannot remove, the half-width at k/2 and 2k panels, and the panels per
    context a `target` half-width needs (None when the between-context part alone is wider: that needs more
    contexts, not panels).

    The CI's variance is read as V(k) = V_b + σ²_w / (k C), V_b the observed (half-width / z)² less the within
    part at the observed k, so the CI's own clustering (whole topics) and level stay in V_b."""
    within, contexts, panels = split.get("within"), split["contexts"], split["panels"]
    if within is None or not contexts or not panels or not math.isfinite(half_width):
        return {"panels_needed": None, "between_share": None, "half_width_half": None, "half_width_double": None}
    z = NormalDist().inv_cdf(0.5 + level / 2)
    observed = (half_width / z) ** 2
    v_between = max(observed - within / (panels * contexts), 0.0)

    def at(k: float) -> float:
        return z * math.sqrt(v_between + within / (k * contexts))

    room = (target / z) ** 2 - v_between
    needed = max(1, math.ceil(within / (contexts * room))) if room > 0 else None
    return {"panels_needed": needed, "between_share": v_between / observed if observed else None,
            "half_width_half": at(panels / 2), "half_width_double": at(2 * panels)}
