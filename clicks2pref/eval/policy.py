"""A policy's panels on held-out contexts, scored by the oracle: per-panel CTRs and the format pass rate, cached
under the code and settings that produce them (`clicks2pref.eval.heldout` adds the CIs)."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from omegaconf import OmegaConf

from clicks2pref.data.io import atomic_write_text, read_cached_json
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.fingerprint import fingerprint
from clicks2pref.models.generate import GenerationConfig, generate

# the code a cached evaluation runs beyond its policy: generation, parsing, prompts, the simulator's oracle, and
# loading the policy (the prompted baseline's identity is its model config, so its loader is part of it too)
CODE_ROOTS = ("clicks2pref.eval.policy", "clicks2pref.data.simulator", "clicks2pref.models.registry",
              "clicks2pref.models.policies")


def evaluate_policy(model, tok, template: PromptTemplate, sim, contexts: Sequence[tuple[str, str]],
                    gen: GenerationConfig, seed: int, samples_per_context: int = 1, first_sample: int = 0) -> dict:
    """Sample `samples_per_context` panels per (topic, facet) context and score each with the oracle (never
    seen in training). A context's CTR is the mean over its panels. Only what was measured: CIs are computed
    from `per_context_ctr` by whoever reports (`with_ci`), so neither a CI setting nor the CI's code regenerates a
    panel. `outputs` holds each context's first panel, `samples` all of them.

    Panel j of a context draws its random numbers from a stream seeded by (seed, the context, j) (common random
    numbers, `models.sampling.row_uniforms`): panel j of every policy on that context shares them, which is what
    makes a paired difference tight, and columns `first_sample` … of a longer evaluation are drawn as they would be
    in one run (`cached_evaluation` extends a cached evaluation by its missing columns)."""
    rng = random.Random(seed)
    conversations = [sim.context(t, f, rng) for t, f in contexts]
    k = samples_per_context
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], gen, num_return_sequences=k,
                    seed=seed, keys=[list(c) for c in contexts], first_sample=first_sample,
                    desc=f"evaluating on {len(contexts)} contexts × {k}")
    parsed = [parse_suggestions(o, len(sim.cfg.examination)) for o in outs]
    flat = sim.oracle_ctr_many([(*contexts[i // k], p.suggestions) for i, p in enumerate(parsed)])
    result = {"samples": [outs[i * k:(i + 1) * k] for i in range(len(contexts))],
              "sample_ctr": flat.reshape(len(contexts), k).tolist(),
              "well_formed": [[p.well_formed for p in parsed[i * k:(i + 1) * k]] for i in range(len(contexts))],
              "conversations": conversations, "contexts": [list(c) for c in contexts]}
    return columns(result, k)


def columns(result: dict, k: int) -> dict:
    """An evaluation's first `k` panels per context, with the fields computed from them (per-context CTR, format
    rate, first outputs): the evaluation `k` samples per context would have made (common random numbers)."""
    samples = [list(s[:k]) for s in result["samples"]]
    sample_ctr = np.asarray(result["sample_ctr"], dtype=float).reshape(len(samples), -1)[:, :k] if samples \
        else np.zeros((0, k))
    well_formed = [w[:k] for w in result["well_formed"]]
    n_panels = sum(len(w) for w in well_formed)
    return {**result, "samples": samples, "sample_ctr": sample_ctr.tolist(), "well_formed": well_formed,
            "samples_per_context": k, "n_contexts": len(samples),
            "format_rate": sum(sum(w) for w in well_formed) / max(n_panels, 1),
            "per_context_ctr": sample_ctr.mean(axis=1).tolist(), "outputs": [s[0] for s in samples]}


def extended(cached: dict, more: dict) -> dict:
    """A cached evaluation with the next columns of panels (`evaluate_policy(..., first_sample=<its columns>)`)."""
    k = cached["samples_per_context"] + more["samples_per_context"]
    joined = {**cached, **{f: [a + b for a, b in zip(cached[f], more[f])]
                           for f in ("samples", "sample_ctr", "well_formed")}}
    return columns(joined, k)


def baseline_id(cfg) -> str:
    """The prompted base policy's identity in the evaluation cache: its model config."""
    return "base:" + json.dumps(OmegaConf.to_container(cfg.policy.model, resolve=True), sort_keys=True)


def evaluation_key(cfg, policy_id: str, template: PromptTemplate, split: str, contexts: Sequence[tuple[str, str]]
                   ) -> str:
    """Hash of everything an evaluation's panels and their oracle scores depend on: the policy's identity (a stage
    artifact key, or the base model's config), the template, the held-out contexts, the simulator, the sampler
    (not its batch size: a panel's random numbers are its own), the seed and the code that runs them
    (`CODE_ROOTS`). Not the number of panels: panel j is the same in every evaluation that draws it. No report
    setting: a CI is computed afterwards."""
    def plain(x):
        return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else (
            dict(vars(x)) if hasattr(x, "__dict__") else x)

    generation = {k: v for k, v in plain(cfg.policy.generation).items() if k != "batch_size"}

    parts = {"policy": policy_id, "template": plain(template), "split": split, "contexts": [list(c) for c in contexts],
             "simulator": plain(cfg.simulator), "generation": generation, "seed": cfg.seed,
             "code": fingerprint(CODE_ROOTS)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_evaluation(cfg, policy_id: str, load_model, template: PromptTemplate, sim, split: str,
                      contexts: Sequence[tuple[str, str]], samples_per_context: int = 1) -> dict:
    """`evaluate_policy` once per (policy, contexts, sampler, code): the panels are kept in
    `artifacts/eval/<key>.json`, so the sft, grpo and evaluate stages (and every job of a sweep) score each panel
    once. A request for fewer panels than are kept takes the first ones; for more, only the missing columns are
    sampled (the sft and grpo stages' one panel per context is the first column of the evaluate stage's 16).
    `load_model()` -> (model, tokenizer) runs only when a panel is missing; `cache=off` recomputes."""
    key = evaluation_key(cfg, policy_id, template, split, contexts)
    path = Path(cfg.paths.artifacts_dir) / "eval" / f"{key}.json"
    cached = read_cached_json(path) if cfg.cache else None
    have = cached["samples_per_context"] if cached else 0
    if have >= samples_per_context:
        return columns(cached, samples_per_context)
    model, tok = load_model()
    more = evaluate_policy(model, tok, template, sim, contexts, cfg.policy.generation, cfg.seed,
                           samples_per_context - have, first_sample=have)
    result = extended(cached, more) if cached else more
    result["policy_id"] = policy_id
    on_disk = read_cached_json(path)  # a concurrent job may have kept more columns meanwhile
    if on_disk is None or on_disk.get("samples_per_context", 0) < result["samples_per_context"]:
        atomic_write_text(json.dumps(result), path)
    return result
