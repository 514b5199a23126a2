"""The benchmark's verdicts under other user models: a run's panels re-scored, nothing retrained.

A run's evaluation fixes each policy's panels on the test contexts (the evaluation cache keeps every sampled
panel; best-of-n keeps the panel it chose). Whether a claim ("SFT is above the canned panel") is a property of
the policies or of the simulator's constants shows when the same panels are scored by the oracle of other user
models: each of the contextual model's switches off in turn, and its constants swept. The canned and ideal
panels are built again under each model (the ideal is each model's own greedy best). Nothing upstream reads
these user models, so no artifact key changes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.eval.ctr import bootstrap_mean
from clicks2pref.eval.reference_panels import reference_panels

# (name, policy row, reference row): the claims each user model is asked, as paired per-context differences
CLAIMS = (("sft_over_canned", "sft", "canned"), ("best_of_over_random", "best_of", "sft"),
          ("sft_over_baseline", "sft", "baseline"), ("grpo_over_sft", "grpo", "sft"))


@dataclass(frozen=True)
class Verdict:
    diff: float
    low: float
    high: float

    @property
    def word(self) -> str:
        """holds: the interval above 0; reversed: below; else not separated."""
        return "holds" if self.low > 0 else "reversed" if self.high < 0 else "not separated"


def stored_panels(artifacts_dir: str | Path, evaluation: dict, k: int) -> dict[str, list[list[list[str]]]]:
    """Each evaluated policy's panels (context -> its sampled panels, parsed) as the evaluation scored them: from
    the evaluation cache file of the policy's identity on the evaluation's contexts; best-of-n's chosen panel
    from the evaluation itself ("best_of")."""
    contexts = evaluation["results"]["sft"]["contexts"]
    n = evaluation["samples_per_context"]
    cache = {}
    for path in sorted((Path(artifacts_dir) / "eval").glob("*.json")):
        try:
            held = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(held, dict) and held.get("contexts") == contexts and held.get("samples_per_context", 0) >= n:
            cache[held.get("policy_id")] = held
    out = {}
    for name, policy_id in evaluation["policies"].items():
        if policy_id not in cache:
            raise FileNotFoundError(f"no evaluation cache file in {Path(artifacts_dir) / 'eval'} holds {n} panels "
                                    f"per context of policy '{name}' ({policy_id}) on the evaluation's contexts")
        out[name] = [[parse_suggestions(o, k).suggestions for o in s[:n]] for s in cache[policy_id]["samples"]]
    chosen = [b for b in evaluation.get("best_of", []) if b.get("of") == "sft"]
    if chosen:
        out["best_of"] = [[parse_suggestions(o, k).suggestions] for o in evaluation["results"][chosen[0]["policy"]]
                          ["outputs"]]
    return out


def per_context_ctr(sim, contexts: Sequence[tuple[str, str]], panels: list[list[list[str]]]) -> np.ndarray:
    """Oracle CTR of each context: the mean over its panels (an empty panel: 0)."""
    items = [(t, f, p) for (t, f), ps in zip(contexts, panels) for p in ps]
    flat = sim.oracle_ctr_many(items)
    out, i = np.zeros(len(contexts)), 0
    for c, ps in enumerate(panels):
        out[c] = flat[i:i + len(ps)].mean() if ps else 0.0
        i += len(ps)
    return out


def rescore(sim, contexts: Sequence[tuple[str, str]], panels: dict[str, list[list[list[str]]]],
            canned_templates: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-context oracle CTR of every stored policy and of the canned and ideal panels, under `sim`."""
    k = len(sim.cfg.examination)
    reference = reference_panels(sim, contexts, canned_templates, k)
    rows = {name: per_context_ctr(sim, contexts, p) for name, p in panels.items()}
    rows.update({name: per_context_ctr(sim, contexts, [[p] for p in ps]) for name, ps in reference.items()})
    return rows


def verdicts(rows: dict[str, np.ndarray], topics: Optional[Sequence[str]], bootstrap_samples: int,
             ci_level: float, seed: int) -> dict[str, Verdict]:
    """Each claim of `CLAIMS` whose rows were scored: the paired difference with its bootstrap CI (resampling
    `topics`, or contexts when None)."""
    out = {}
    for name, a, b in CLAIMS:
        if a in rows and b in rows:
            est = bootstrap_mean(rows[a] - rows[b], bootstrap_samples, ci_level, seed, topics)
            out[name] = Verdict(est.mean, est.low, est.high)
    return out
