"""A policy's panels on held-out contexts, scored by the oracle: per-panel CTRs and the format pass rate, cached
under the code and settings that produce them (`clicks2pref.eval.heldout` adds the CIs)."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Sequence

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
                    gen: GenerationConfig, seed: int, samples_per_context: int = 1) -> dict:
    """Sample `samples_per_context` panels per (topic, facet) context and score each with the oracle (never
    seen in training). A context's CTR is the mean over its panels. Only what was measured: CIs are computed
    from `per_context_ctr` by whoever reports (`with_ci`), so neither a CI setting nor the CI's code regenerates a
    panel. `outputs` holds each context's first panel, `samples` all of them."""
    rng = random.Random(seed)
    conversations = [sim.context(t, f, rng) for t, f in contexts]
    k = samples_per_context
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], gen, num_return_sequences=k,
                    seed=seed, desc=f"evaluating on {len(contexts)} contexts × {k}")
    samples = [outs[i * k:(i + 1) * k] for i in range(len(contexts))]
    parsed = [parse_suggestions(o, len(sim.cfg.examination)) for o in outs]
    flat = sim.oracle_ctr_many([(*contexts[i // k], p.suggestions) for i, p in enumerate(parsed)])
    sample_ctr = flat.reshape(len(contexts), k)
    return {"format_rate": sum(p.well_formed for p in parsed) / max(len(parsed), 1), "n_contexts": len(contexts),
            "samples_per_context": k, "per_context_ctr": sample_ctr.mean(axis=1).tolist(),
            "outputs": [s[0] for s in samples], "samples": samples, "sample_ctr": sample_ctr.tolist(),
            "conversations": conversations, "contexts": [list(c) for c in contexts]}


def baseline_id(cfg) -> str:
    """The prompted base policy's identity in the evaluation cache: its model config."""
    return "base:" + json.dumps(OmegaConf.to_container(cfg.policy.model, resolve=True), sort_keys=True)


def evaluation_key(cfg, policy_id: str, template: PromptTemplate, split: str, contexts: Sequence[tuple[str, str]],
                   samples_per_context: int = 1) -> str:
    """Hash of everything an evaluation's panels and their oracle scores depend on: the policy's identity (a stage
    artifact key, or the base model's config), the template, the held-out contexts, the simulator, the sampler,
    the seed and the code that runs them (`CODE_ROOTS`). No report setting: a CI is computed afterwards."""
    def plain(x):
        return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else (
            vars(x) if hasattr(x, "__dict__") else x)

    parts = {"policy": policy_id, "template": plain(template), "split": split, "contexts": [list(c) for c in contexts],
             "simulator": plain(cfg.simulator), "generation": plain(cfg.policy.generation), "seed": cfg.seed,
             "samples_per_context": samples_per_context, "code": fingerprint(CODE_ROOTS)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_evaluation(cfg, policy_id: str, load_model, template: PromptTemplate, sim, split: str,
                      contexts: Sequence[tuple[str, str]], samples_per_context: int = 1) -> dict:
    """`evaluate_policy` once per (policy, contexts, sampler, code): the result is kept in
    `artifacts/eval/<key>.json`, so the sft, grpo and evaluate stages (and every job of a sweep) score
    each policy once. `load_model()` -> (model, tokenizer) runs only on a miss; `cache=off` recomputes."""
    key = evaluation_key(cfg, policy_id, template, split, contexts, samples_per_context)
    path = Path(cfg.paths.artifacts_dir) / "eval" / f"{key}.json"
    if cfg.cache and (cached := read_cached_json(path)) is not None:
        return cached
    model, tok = load_model()
    result = evaluate_policy(model, tok, template, sim, contexts, cfg.policy.generation, cfg.seed, samples_per_context)
    result["policy_id"] = policy_id
    atomic_write_text(json.dumps(result), path)
    return result
