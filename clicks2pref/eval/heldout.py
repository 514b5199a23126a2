"""Policies side by side on held-out contexts, scored by the oracle: the one evaluator of sft, grpo and evaluate.

A policy's panels come from the evaluation cache (`clicks2pref.eval.policy.cached_evaluation`), so each
policy is generated and scored once per set of contexts, whichever stage asks first. On top of that:
diversity of its panels, and the paired comparison with a reference policy on the same contexts
(CTR difference with a bootstrap CI, GSB).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.simulator import context_splits
from clicks2pref.eval.ctr import bootstrap_mean, cluster_labels
from clicks2pref.eval.gsb import gsb
from clicks2pref.eval.policy import cached_evaluation
from clicks2pref.rewards.diversity import DiversityReward, distinct_n

SUMMARY = ("oracle_ctr", "ci_low", "ci_high", "format_rate")


def heldout_contexts(cfg, sim, ev) -> list[tuple[str, str]]:
    """The (topic, facet) contexts of split `ev.split`, never in any log; the first `ev.max_contexts`."""
    split = cfg.data.split
    contexts = context_splits(sim.world, split)[ev.split]
    return contexts[:ev.max_contexts] if ev.max_contexts else contexts


def with_ci(m: dict, bootstrap_samples: int, ci_level: float, seed: int, clusters: str = "context") -> dict:
    """`m` (an `evaluate_policy` result) with its oracle CTR, bootstrap CI and the bootstrap's clusters (`clusters`:
    "topic" resamples whole topics, whose contexts share intents)."""
    labels = cluster_labels([tuple(c) for c in m["contexts"]], clusters)
    est = bootstrap_mean(m["per_context_ctr"], bootstrap_samples, ci_level, seed, labels)
    return {**m, "oracle_ctr": est.mean, "ci_low": est.low, "ci_high": est.high, "clusters": labels}


def score_policy(cfg, ev, sim, contexts: Sequence, policy_id: str, load: Callable, template,
                 diversity: Optional[DiversityReward] = None) -> dict:
    """Oracle CTR with CI, format rate, per-context CTR and outputs; distinct-2 and mean within-panel cosine
    when a diversity embedder is given. `load()` -> (model, tokenizer) runs only on a cache miss."""
    m = with_ci(cached_evaluation(cfg, policy_id, load, template, sim, ev.split, contexts, ev.samples_per_context),
                ev.bootstrap_samples, ev.ci_level, cfg.seed, ev.ci_clusters)
    if diversity is not None:
        panels = [parse_suggestions(o, len(cfg.simulator.examination)).suggestions for o in m["outputs"]]
        m["distinct_2"] = distinct_n(panels, 2)
        m["mean_pairwise_cosine"] = diversity.mean_pairwise_cosine(panels)
    return m


def paired(policy: dict, reference: dict, ev, gsb_margin: float, seed: int) -> dict:
    """The policy against the reference on the same contexts: mean CTR difference with its bootstrap CI,
    relative lift, and GSB (good / same / bad contexts at `gsb_margin`). The CI resamples the contexts' topics
    when the policy's evaluation says so (`clusters`)."""
    diff = [a - b for a, b in zip(policy["per_context_ctr"], reference["per_context_ctr"])]
    lift = bootstrap_mean(diff, ev.bootstrap_samples, ev.ci_level, seed, policy.get("clusters"))
    ref = reference["oracle_ctr"]
    return {"ctr_diff": lift.mean, "ci_low": lift.low, "ci_high": lift.high,
            "relative": lift.mean / ref if ref else None,
            "gsb": gsb(policy["per_context_ctr"], reference["per_context_ctr"], gsb_margin).as_dict()}


def summary(m: dict, keys: Sequence[str] = SUMMARY) -> dict:
    return {k: m[k] for k in keys}


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    """A markdown table of `rows` (floats to 4 decimals)."""
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
