"""Two-stage fusion of reward-component weights (SPEC 5.4).

Stage one: a logistic regression (scikit-learn) of clicks on the components' panel scores over held-out
impressions; its coefficients, negatives clipped to 0 and normalised to sum 1, are the first weights.
Raw (unstandardised) scores are used on purpose: the composite reward sums raw scores, and if clicks
follow logit = b + Σ β_k r_k then w ∝ β is exactly the click model's own weighting. The stage may centre
the scores within each context first (`centre_within`): a GRPO advantage compares panels of one context,
so a component that only tells easy contexts from hard ones should earn no weight.

Stage two: a grid around those weights (each multiplied by each of `grid.factors`, from a `grid.floor`
so a component stage one zeroed can come back, renormalised). Every point gets three objectives:
click AUC of its composite score on the held-out impressions, and, on candidate panels sampled from
the reference policy, the rule-pass rate and in-distribution rate (log-PPL ≤ τ) of the panel the
composite would pick in each context (best-of-N, a cheap stand-in for where RL will push). The chosen
point is the Pareto-optimal one with the highest AUC among those meeting `min_rule_pass` and
`min_in_distribution`; if none meets them, the one closest to meeting them.

The `fusion` config, `FusionConfig`, lives in `clicks2pref.config.fusion` (re-exported here), so that
checking a config loads no scikit-learn.
"""
from __future__ import annotations

import itertools
import logging
from typing import Optional, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from clicks2pref.config.fusion import LOG_SOURCES, FusionConfig, FusionGridConfig  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def normalise(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(w, dtype=float), 0.0, None)
    s = w.sum()
    return w / s if s > 0 else np.full(len(w), 1.0 / len(w))


def fit_weights(scores: np.ndarray, clicks: np.ndarray, C: float = 100.0, seed: int = 0) -> dict:
    """Stage one: logistic regression of clicks [N] on component scores [N, K] -> normalised weights."""
    X, y = np.asarray(scores, dtype=float), np.asarray(clicks, dtype=int)
    if len(np.unique(y)) < 2:
        log.warning("fusion: the held-out clicks are all %d; stage one falls back to equal weights",
                    y[0] if len(y) else -1)
        return {"weights": np.full(X.shape[1], 1.0 / X.shape[1]), "coef": np.zeros(X.shape[1]), "intercept": 0.0}
    model = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(X, y)
    coef = model.coef_[0]
    return {"weights": normalise(coef), "coef": coef, "intercept": float(model.intercept_[0])}


def grid_points(w0: np.ndarray, factors: Sequence[float], floor: float) -> np.ndarray:
    """Distinct normalised weight vectors w0_k·f_k over every combination of factors (w0 itself included)."""
    base = np.maximum(np.asarray(w0, dtype=float), floor)
    rows = [normalise(base * np.array(f)) for f in itertools.product(sorted(set(factors) | {1.0}), repeat=len(base))]
    rows.append(normalise(w0))
    _, keep = np.unique(np.round(rows, 6), axis=0, return_index=True)
    return np.array(rows)[np.sort(keep)]


def centre_within(scores: np.ndarray, groups: Sequence) -> np.ndarray:
    """Each row minus the mean of its group's rows: what is left is how a panel differs from the other
    panels of its context, the only difference a GRPO advantage sees."""
    X = np.asarray(scores, dtype=float)
    keys = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    sums = np.zeros((keys.max() + 1,) + X.shape[1:]) if len(keys) else np.zeros((0,) + X.shape[1:])
    np.add.at(sums, keys, X)
    counts = np.bincount(keys, minlength=len(sums)).reshape((-1,) + (1,) * (X.ndim - 1))
    return X - (sums / np.maximum(counts, 1))[keys]


def click_auc(scores: np.ndarray, clicks: np.ndarray) -> float:
    if len(np.unique(clicks)) < 2:
        return float("nan")
    return float(roc_auc_score(clicks, scores))


def pareto_mask(objectives: np.ndarray) -> np.ndarray:
    """Rows not dominated by another row (every objective maximised; NaN counts as worst)."""
    obj = np.nan_to_num(np.asarray(objectives, dtype=float), nan=-np.inf)
    keep = np.ones(len(obj), dtype=bool)
    for i in range(len(obj)):
        dominated = np.all(obj >= obj[i], axis=1) & np.any(obj > obj[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def picked_rates(weights: np.ndarray, cand_scores: np.ndarray, cand_pass: np.ndarray, cand_in_dist: np.ndarray
                 ) -> tuple[float, float]:
    """Rule-pass and in-distribution rate of the best-scoring candidate per context.

    cand_scores [C, S, K], cand_pass / cand_in_dist [C, S] (booleans)."""
    if cand_scores.size == 0:
        return float("nan"), float("nan")
    total = np.nan_to_num(cand_scores @ weights, nan=-np.inf)
    best = total.argmax(axis=1)
    rows = np.arange(len(best))
    return float(cand_pass[rows, best].mean()), float(cand_in_dist[rows, best].mean())


def fuse(names: Sequence[str], scores: np.ndarray, clicks: np.ndarray, cfg, cand_scores: Optional[np.ndarray] = None,
         cand_pass: Optional[np.ndarray] = None, cand_in_dist: Optional[np.ndarray] = None, seed: int = 0) -> dict:
    """Both stages; returns the chosen weights by name, stage one's fit and the searched front."""
    names = list(names)
    stage_one = fit_weights(scores, clicks, cfg.C, seed)
    W = grid_points(stage_one["weights"], cfg.grid.factors, cfg.grid.floor)
    if cand_scores is None:
        cand_scores = np.zeros((0, 0, len(names)))
        cand_pass = cand_in_dist = np.zeros((0, 0), dtype=bool)
    rows = []
    for w in W:
        rule_pass, in_dist = picked_rates(w, cand_scores, cand_pass, cand_in_dist)
        rows.append({"weights": dict(zip(names, map(float, w))), "auc": click_auc(scores @ w, clicks),
                     "rule_pass": rule_pass, "in_distribution": in_dist})
    has_candidates = cand_scores.size > 0
    objectives = np.array([[r["auc"], r["rule_pass"], r["in_distribution"]] if has_candidates else [r["auc"]]
                           for r in rows])
    front = [r for r, keep in zip(rows, pareto_mask(objectives)) if keep]
    feasible = [r for r in front if not has_candidates or
                (r["rule_pass"] >= cfg.min_rule_pass and r["in_distribution"] >= cfg.min_in_distribution)]
    auc_key = lambda r: -np.inf if np.isnan(r["auc"]) else r["auc"]  # noqa: E731
    if feasible:
        chosen = max(feasible, key=auc_key)
    else:  # closest to the constraints, then AUC
        shortfall = lambda r: (max(cfg.min_rule_pass - r["rule_pass"], 0) +  # noqa: E731
                               max(cfg.min_in_distribution - r["in_distribution"], 0))
        chosen = min(front, key=lambda r: (shortfall(r), -auc_key(r)))
        log.warning("fusion: no Pareto point meets rule_pass ≥ %.2f and in_distribution ≥ %.2f; keeping the closest "
                    "(rule_pass %.2f, in_distribution %.2f)", cfg.min_rule_pass, cfg.min_in_distribution,
                    chosen["rule_pass"], chosen["in_distribution"])
    return {"weights": chosen["weights"], "chosen": chosen, "constraints_met": bool(feasible),
            "stage_one": {"weights": dict(zip(names, map(float, stage_one["weights"]))),
                          "coef": dict(zip(names, map(float, stage_one["coef"]))),
                          "intercept": stage_one["intercept"],
                          "auc": click_auc(scores @ stage_one["weights"], clicks)},
            "grid_size": len(rows), "front": front}
