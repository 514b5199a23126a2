"""Best-of-n: of n sampled panels per context, serve the one the reward scores highest.

It is the cheapest test of a reward (if picking by it does not raise oracle CTR, RL on it will not
either) and a serving-time option in its own right. The samples are the powered evaluation's own
(`eval.samples_per_context`), so the rerank costs reward scoring only. Within-context Spearman between
the reward's panel scores and the oracle's CTR of the same panels says how well the reward orders what
the policy actually proposes.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def pick_best(scores: np.ndarray, n: int) -> np.ndarray:
    """Index of the highest-scored of the first n samples of each context (ties: the first)."""
    return np.asarray(scores)[:, :n].argmax(axis=1)


def within_context_spearman(scores: np.ndarray, oracle: np.ndarray) -> dict:
    """Mean Spearman ρ over contexts whose scores and oracle values both vary, and how many did."""
    rhos = []
    for s, o in zip(np.asarray(scores), np.asarray(oracle)):
        if np.ptp(s) > 0 and np.ptp(o) > 0:
            rhos.append(spearmanr(s, o).statistic)
    return {"spearman": float(np.mean(rhos)) if rhos else float("nan"), "contexts": len(rhos)}


def best_of_n(result: dict, scores: np.ndarray, n: int) -> dict:
    """A policy result (`clicks2pref.eval.policy.evaluate_policy`) reranked: the chosen panel per context, with the
    same measured fields (per-context CTR, outputs, format, contexts), plus the reward's within-context Spearman
    against the oracle over all samples. CIs are added by whoever reports (`clicks2pref.eval.heldout.with_ci`)."""
    sample_ctr = np.asarray(result["sample_ctr"])
    if n > sample_ctr.shape[1]:
        raise ValueError(f"best-of-{n} needs {n} samples per context, the evaluation has {sample_ctr.shape[1]}")
    best = pick_best(scores, n)
    ctr = sample_ctr[np.arange(len(best)), best]
    outputs = [result["samples"][i][j] for i, j in enumerate(best)]
    agreement = within_context_spearman(np.asarray(scores)[:, :n], sample_ctr[:, :n])
    return {"n_contexts": len(best), "per_context_ctr": ctr.tolist(), "outputs": outputs, "samples_per_context": 1,
            "contexts": result["contexts"], "format_rate": result["format_rate"], "best_of": n,
            "chosen": best.tolist(), "reward_spearman": agreement["spearman"],
            "spearman_contexts": agreement["contexts"], "oracle_max_ctr": float(sample_ctr[:, :n].max(axis=1).mean())}
