"""A policy's panels on held-out contexts, scored by the oracle: CTR with CI and format pass rate."""
from __future__ import annotations

import random
from typing import Sequence

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.eval.ctr import bootstrap_mean
from clicks2pref.models.generate import GenerationConfig, generate


def evaluate_policy(model, tok, template: PromptTemplate, sim, contexts: Sequence[tuple[str, str]],
                    gen: GenerationConfig, seed: int, bootstrap_samples: int = 1000, ci_level: float = 0.95) -> dict:
    """Generate one panel per (topic, facet) context and score it with the oracle (never seen in training)."""
    rng = random.Random(seed)
    conversations = [sim.context(t, f, rng) for t, f in contexts]
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], gen, seed=seed)
    parsed = [parse_suggestions(o, len(sim.cfg.examination)) for o in outs]
    ctr = sim.oracle_ctr_many([(t, f, p.suggestions) for (t, f), p in zip(contexts, parsed)])
    est = bootstrap_mean(ctr, bootstrap_samples, ci_level, seed)
    return {"oracle_ctr": est.mean, "ci_low": est.low, "ci_high": est.high,
            "format_rate": sum(p.well_formed for p in parsed) / max(len(parsed), 1), "n_contexts": est.n,
            "per_context_ctr": ctr.tolist(), "outputs": outs}
