"""Offline CTR without an oracle: a panel's click probability under the click model the reward models learned.

The reward models are trained (`reward_model.objective=click_model`) as the attraction of a click model
whose examination e_k is learned from the same logs. Read back, that model is an estimator of any panel's
CTR, on conversations it never saw:

    est. CTR = P(at least one click) = 1 − Π_k (1 − e_k g_k a_k),   a_k = Φ(μ_k / √(1 + σ_k²))  (GaRM)
                                                                    a_k = sigmoid(r_k)            (BTRM)

with g_k the learned redundancy discount when the model has one. GaRM's σ is the model's own uncertainty:
the same panel scored at μ ∓ `band`·σ gives a band (`low`, `high`) beside the estimate. Every number here is
*model-based*: it is as good as the click model, which is why the logged policy's own panels are scored too
(`logged_anchor`): its estimated CTR beside its observed CTR on the same held-out impressions says how far
off the estimator's level is, and lifts are read relative to that anchor. On the simulator the same numbers
sit beside the oracle's, so the estimator's bias is measured rather than assumed.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch

from clicks2pref.data.log_splits import conversation_key
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.errors import ConfigError
from clicks2pref.eval.ctr import bootstrap_mean
from clicks2pref.eval.gsb import gsb
from clicks2pref.models.reward_heads import OUTPUTS, load_reward_model
from clicks2pref.models.score_cache import ScoreStore, SuggestionScorer, score_store
from clicks2pref.models.shared_prefix import rm_outputs
from clicks2pref.models.similarity import PanelSimilarity
from clicks2pref.objectives.click_model import (EPS, btrm_attraction, garm_attraction, redundancy_discount,
                                                similarity_above)
from clicks2pref.rewards.base import resolve_examination
from clicks2pref.rewards.diversity import distinct_n

BASIS = "model-based"  # the label every offline estimate carries


class ClickModelCTR:
    """A trained reward model read as the click model it was trained in (module docstring)."""

    def __init__(self, model, examination: Optional[Sequence[float]] = None, redundancy: bool = True,
                 batch_size: int = 32, store: Optional[ScoreStore] = None):
        self.model, self.kind = model, model.kind
        self.examination = np.asarray(resolve_examination(examination, model, model.kind), dtype=float)
        # the head's outputs per suggestion, cached (on disk too with a `store`: the model's score cache, which the
        # best-of rerank and earlier runs filled with the same entries)
        self.scorer = SuggestionScorer(partial(rm_outputs, model, batch_size=batch_size), store=store)
        self.redundancy = getattr(model, "redundancy", None) if redundancy else None
        self.similarity = PanelSimilarity(self.redundancy["embedder"]) if self.redundancy else None

    @property
    def k(self) -> int:
        return len(self.examination)

    def attraction(self, contexts: Sequence[list[dict]], panels: Sequence[Sequence[str]], shift: float = 0.0
                   ) -> list[np.ndarray]:
        """Per panel, each shown suggestion's attraction a (GaRM at μ + shift·σ; BTRM has no σ: shift ignored)."""
        flat_c = [c for c, p in zip(contexts, panels) for _ in p[:self.k]]
        flat_s = [s for p in panels for s in p[:self.k]]
        out = self.score(flat_c, flat_s)
        if self.kind == "btrm":
            a = btrm_attraction(out["reward"])
        else:
            a = garm_attraction(out["mu"] + shift * out["sigma"], out["sigma"])
        a, rows, i = a.double().numpy(), [], 0
        for p in panels:
            n = len(p[:self.k])
            rows.append(a[i:i + n])
            i += n
        return rows

    def score(self, contexts: Sequence[list[dict]], suggestions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The head's outputs ({"mu", "sigma"} or {"reward"}) per suggestion."""
        rows = self.scorer.lookup(contexts, suggestions) if suggestions else []
        return {n: torch.tensor([r[n] for r in rows], dtype=torch.float32) for n in OUTPUTS[self.kind]}

    def discounts(self, panels: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """g_k per shown suggestion (1 without a learned redundancy term)."""
        if not self.redundancy:
            return [np.ones(len(p[:self.k])) for p in panels]
        self.similarity.prefetch(s for p in panels for s in p[:self.k])
        out = []
        for p in panels:
            p = list(p[:self.k])
            above = similarity_above(torch.as_tensor(self.similarity.matrix(p), dtype=torch.float64), len(p))
            out.append(redundancy_discount(above, self.redundancy["weight"], self.redundancy["threshold"]).numpy())
        return out

    def panel_ctr(self, contexts: Sequence[list[dict]], panels: Sequence[Sequence[str]], band: float = 1.0
                  ) -> dict[str, np.ndarray]:
        """{"ctr", "low", "high"} per panel (in the order shown): the estimate, and GaRM's σ band at μ ∓ band·σ.
        An empty panel has CTR 0."""
        g = self.discounts(panels)
        out = {}
        for name, shift in (("ctr", 0.0), ("low", -band), ("high", band)):
            a = self.attraction(contexts, panels, shift)
            out[name] = np.array([1 - np.prod(1 - self.examination[:len(ai)] * gi * ai) if len(ai) else 0.0
                                  for ai, gi in zip(a, g)])
        return out

    def log_likelihood(self, records: Sequence[dict], cascade: bool = True) -> float:
        """Mean log-likelihood per impression of logged clicks under the click model (cascade: positions after
        the first click say nothing; pbm: every shown position is a Bernoulli). Higher is a better fit."""
        if not records:
            return float("nan")
        panels = [r["suggestions"] for r in records]
        a, g = self.attraction([r["context"] for r in records], panels), self.discounts(panels)
        total = 0.0
        for r, ai, gi in zip(records, a, g):
            p = np.clip(self.examination[:len(ai)] * gi * ai, EPS, 1 - EPS)
            clicks = np.asarray(r["clicks"][:len(ai)], dtype=bool)
            seen = len(ai) if not (cascade and clicks.any()) else int(clicks.argmax()) + 1
            total += float(np.where(clicks, np.log(p), np.log1p(-p))[:seen].sum())
        return total / len(records)


def sample_ctr(estimator: ClickModelCTR, contexts: Sequence[list[dict]], samples: Sequence[Sequence[str]],
               band: float = 1.0) -> dict[str, np.ndarray]:
    """{"ctr", "low", "high"} [C, S]: each of S sampled policy outputs per context parsed and estimated."""
    s = len(samples[0]) if samples else 0
    flat_c = [c for c, group in zip(contexts, samples) for _ in group]
    panels = [parse_suggestions(t, estimator.k).suggestions for group in samples for t in group]
    est = estimator.panel_ctr(flat_c, panels, band)
    return {n: v.reshape(len(samples), s) for n, v in est.items()}


def logged_anchor(estimator: ClickModelCTR, records: Sequence[dict], band: float = 1.0) -> dict:
    """The logged policy on held-out impressions, per conversation (first-seen order): its estimated CTR (each
    impression's panel in the order it was shown) and its observed CTR (any click), with the impressions."""
    est = estimator.panel_ctr([r["context"] for r in records], [r["suggestions"] for r in records], band)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by.setdefault(conversation_key(r["context"]), []).append(i)
    idx = list(by.values())
    observed = np.array([float(any(r["clicks"])) for r in records])
    return {"keys": list(by), "contexts": [records[ix[0]]["context"] for ix in idx],
            "estimated": np.array([est["ctr"][ix].mean() for ix in idx]),
            "low": np.array([est["low"][ix].mean() for ix in idx]),
            "high": np.array([est["high"][ix].mean() for ix in idx]),
            "observed": np.array([observed[ix].mean() for ix in idx]),
            "impressions": np.array([len(ix) for ix in idx])}


def paired_lift(values: np.ndarray, reference: np.ndarray, bootstrap_samples: int, ci_level: float, seed: int,
                clusters=None) -> dict:
    """Mean difference over contexts with its bootstrap CI, and the same relative to the reference's mean."""
    diff = bootstrap_mean(np.asarray(values) - np.asarray(reference), bootstrap_samples, ci_level, seed, clusters)
    ref = float(np.mean(reference))
    rel = (lambda x: x / ref if ref else float("nan"))  # noqa: E731
    return {"diff": diff.mean, "diff_low": diff.low, "diff_high": diff.high,
            "relative": rel(diff.mean), "relative_low": rel(diff.low), "relative_high": rel(diff.high)}


def row(name: str, per_context: np.ndarray, low: np.ndarray, high: np.ndarray, anchor: np.ndarray,
        bootstrap_samples: int, ci_level: float, seed: int, clusters=None, **extra) -> dict:
    """One offline-table row: estimated CTR with its CI over contexts, its σ band, and its paired lift over the
    logged policy's estimated CTR on the same contexts."""
    est = bootstrap_mean(per_context, bootstrap_samples, ci_level, seed, clusters)
    lift = paired_lift(per_context, anchor, bootstrap_samples, ci_level, seed, clusters)
    return {"policy": name, "basis": BASIS, "est_ctr": est.mean, "ci_low": est.low, "ci_high": est.high,
            "sigma_low": float(np.mean(low)), "sigma_high": float(np.mean(high)),
            "lift_vs_logged": lift["relative"], "lift_low": lift["relative_low"], "lift_high": lift["relative_high"],
            "contexts": est.n, **extra}


def build_estimators(rm_models: dict[str, str], primary: str, cache_dir=None, trust_remote_code: bool = False
                     ) -> tuple[dict[str, ClickModelCTR], str]:
    """({kind: estimator} of every trained reward model, the primary kind): `primary` when it was trained, else
    the first; a ConfigError naming the fix when no reward model was trained at all."""
    if not rm_models:
        raise ConfigError("needs a trained reward model to estimate CTR without the simulator; add garm or btrm to "
                          "reward_model.kinds", "eval.offline.estimator")
    estimators = {kind: ClickModelCTR(load_reward_model(folder, cache_dir, trust_remote_code=trust_remote_code),
                                      store=score_store(folder))
                  for kind, folder in rm_models.items()}
    return estimators, primary if primary in estimators else next(iter(estimators))


def compare_policies(estimator: ClickModelCTR, conversations: Sequence[list[dict]], outputs: dict[str, list[str]],
                     reference: str, bootstrap_samples: int, ci_level: float, seed: int, gsb_margin: float,
                     diversity=None) -> dict:
    """Two or more policies' panels (one output per conversation each) by estimated CTR: each with its CI, the
    paired difference against `reference` and GSB at `gsb_margin`; format rate and diversity. Model-based."""
    out = {"basis": BASIS, "contexts": len(conversations)}
    per = {}
    for name, texts in outputs.items():
        parsed = [parse_suggestions(t, estimator.k) for t in texts]
        panels = [p.suggestions for p in parsed]
        per[name] = estimator.panel_ctr(list(conversations), panels)["ctr"]
        est = bootstrap_mean(per[name], bootstrap_samples, ci_level, seed)
        out[name] = {"estimated_ctr": est.mean, "ci_low": est.low, "ci_high": est.high,
                     "format_rate": float(np.mean([p.well_formed for p in parsed])) if parsed else float("nan"),
                     "distinct_2": distinct_n(panels, 2),
                     "mean_pairwise_cosine": diversity.mean_pairwise_cosine(panels) if diversity else float("nan")}
    for name in outputs:
        if name != reference:
            lift = paired_lift(per[name], per[reference], bootstrap_samples, ci_level, seed)
            out["lift"] = {"ctr_diff": lift["diff"], "ci_low": lift["diff_low"], "ci_high": lift["diff_high"],
                           "relative": lift["relative"]}
            out["gsb"] = gsb(per[name], per[reference], gsb_margin).as_dict()
    return out
