"""Stage `fusion` (SPEC 5.4): weights of the reward components from held-out clicks, then a constrained grid.

Reads the click logs, the SFT policy (the reference of the `ppl` term and the source of candidate
panels) and the reward models; scores every distinct panel of the held-out weeks (`fusion.weeks`,
not used to train the reward models) with each enabled component of `rewards`, fits clicks on the
scores (stage one) and searches the grid around the fit under the rule-pass and in-distribution
constraints (stage two; `clicks2pref.rewards.fusion`). Writes `artifacts/fusion/<key>/fusion_weights.json`
(weights, τ, stage one's fit, the Pareto front searched) and copies it to the run folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def fusion_key(cfg, inputs: dict) -> str:
    from clicks2pref.rewards.base import SCORING_VERSION
    from clicks2pref.stages.artifacts import stage_key
    from clicks2pref.stages.sft import logs_fingerprint

    parts = [stage_key(cfg, "fusion"), logs_fingerprint(cfg), f"scoring-v{SCORING_VERSION}"]
    parts += [inputs[s]["key"] for s in ("sft", "rm") if s in inputs]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def panel_table(records: list[dict]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Distinct panels of the records, and per impression its panel index and click (any position)."""
    from clicks2pref.rewards.base import context_key

    index: dict = {}
    panels, rows, clicks = [], [], []
    for r in records:
        key = (context_key(r["context"]), tuple(r["suggestions"]))
        if key not in index:
            index[key] = len(panels)
            panels.append(r)
        rows.append(index[key])
        clicks.append(int(any(r["clicks"])))
    return panels, np.array(rows, dtype=int), np.array(clicks, dtype=int)


def score_matrix(components: dict, batch) -> np.ndarray:
    """[N, K] component scores of a RewardBatch, columns in `components` order."""
    import torch

    cols = [torch.as_tensor(c(batch), dtype=torch.float64).numpy() for c in components.values()]
    return np.stack(cols, axis=1) if cols else np.zeros((len(batch), 0))


def candidates(cfg, model, tok, template, records: list[dict], k: int) -> tuple[list[list[dict]], list[str]]:
    """Panels the reference policy samples for held-out logged contexts, `samples_per_context` each (grouped)."""
    from clicks2pref.data.prompts import build_messages
    from clicks2pref.models.generate import GenerationConfig, generate
    from clicks2pref.rewards.base import context_key

    fc = cfg.fusion
    contexts = list({context_key(r["context"]): r["context"] for r in records}.values())
    random.Random(cfg.seed).shuffle(contexts)
    contexts = contexts[:fc.candidate_contexts]
    if not contexts or fc.samples_per_context < 1:
        return [], []
    g = cfg.grpo  # sampled as GRPO samples
    gen = GenerationConfig(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                           do_sample=True, batch_size=cfg.policy.generation.batch_size)
    texts = generate(model, tok, [build_messages(template, c) for c in contexts], gen,
                     num_return_sequences=fc.samples_per_context, seed=cfg.seed)
    return [c for c in contexts for _ in range(fc.samples_per_context)], texts


def run(cfg, loggers=()) -> dict:
    from clicks2pref.data.io import load_impressions
    from clicks2pref.data.sources import click_log_source
    from clicks2pref.errors import ClickLogError
    from clicks2pref.loggers import log_metrics
    from clicks2pref.rewards.base import RewardBatch, RewardResources
    from clicks2pref.rewards.composite import build_components, enabled, needed_reward_models
    from clicks2pref.rewards.fusion import fuse
    from clicks2pref.rewards.ppl import ReferenceScorer, calibrate_tau
    from clicks2pref.rewards.rule import RuleReward
    from clicks2pref.stages import rm as rm_stage
    from clicks2pref.stages import sft as sft_stage
    from clicks2pref.report import write_job_metrics
    from clicks2pref.stages.artifacts import artifact_path, atomic_dir
    from clicks2pref.stages.grpo import check_config, logged_panels, rm_models, sft_dir
    from clicks2pref.stages.sft import load_sft_policy

    check_config(cfg)
    fc = cfg.fusion
    names = enabled(cfg.rewards)
    inputs = {"sft": sft_stage.run(cfg, loggers)}
    if needed_reward_models(cfg.rewards):
        inputs["rm"] = rm_stage.run(cfg, loggers)
    key = fusion_key(cfg, inputs)
    final = artifact_path(cfg, "fusion", key)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.cache and (final / "fusion_weights.json").exists():
        log.info("fusion: reusing %s", final)
        result = json.loads((final / "fusion_weights.json").read_text())
        (out_dir / "fusion_weights.json").write_text(json.dumps(result, indent=2))
        write_job_metrics(cfg, "fusion", flat_metrics(result))
        return result

    start = time.time()
    source = click_log_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    held = [r for r in records if r["week"] in fc.weeks]
    rest = [r for r in records if r["week"] not in fc.weeks] or records
    if not held:
        raise ClickLogError(f"fusion.weeks {list(fc.weeks)}: no impressions in those weeks (weeks present: "
                            f"{sorted({r['week'] for r in records})}); set fusion.weeks", str(source),
                            field="fusion.weeks")

    model, tok = load_sft_policy(sft_dir(cfg, inputs), cfg, merge=True)
    template = cfg.prompt[inputs["sft"]["template"]]
    scorer = ReferenceScorer(model, tok, template, cfg.grpo.temperature, cfg.grpo.micro_batch_size)
    resources = RewardResources(rm_models(cfg, inputs), scorer, cfg.paths.model_cache)
    components = build_components(cfg.rewards, resources)
    k = len(cfg.simulator.examination)

    # τ: a quantile of logged panels' reference log-PPL (training weeks), used by `ppl` and the constraint
    quantile = cfg.rewards.ppl.quantile if "ppl" in components else 0.95
    calibration_panels = cfg.rewards.ppl.calibration_panels if "ppl" in components else 64
    if "ppl" in components and components["ppl"].tau is not None:
        tau = components["ppl"].tau
    else:
        contexts, panels = logged_panels(rest, calibration_panels, cfg.seed)
        tau = calibrate_tau(scorer(contexts, panels), quantile)
    if "ppl" in components:
        components["ppl"].tau = tau

    # stage one's data: component scores of held-out panels, one row per impression
    from clicks2pref.data.parsing import format_suggestions

    panels, rows, clicks = panel_table(held)
    logged = RewardBatch([p["context"] for p in panels], [format_suggestions(p["suggestions"]) for p in panels], k)
    panel_scores = score_matrix(components, logged)
    log.info("fusion: %d held-out impressions (%d panels, CTR %.3f) scored by %s", len(rows), len(panels),
             clicks.mean(), ", ".join(names))

    # stage two's candidates: reference-policy samples for held-out contexts
    cand_contexts, cand_texts = candidates(cfg, model, tok, template, held, k)
    cand_scores = cand_pass = cand_in_dist = None
    if cand_texts:
        batch = RewardBatch(cand_contexts, cand_texts, k)
        S = fc.samples_per_context
        cand_scores = score_matrix(components, batch).reshape(-1, S, len(names))
        rule = components.get("rule") or RuleReward()
        cand_pass = rule.passes(batch).numpy().reshape(-1, S)
        log_ppl = batch.ref_log_ppl if batch.ref_log_ppl is not None else scorer(batch.contexts, batch.completions)
        cand_in_dist = (np.asarray(log_ppl) <= tau).reshape(-1, S)

    fused = fuse(names, panel_scores[rows], clicks, fc, cand_scores, cand_pass, cand_in_dist, cfg.seed)
    result = {"key": key, "rewards": cfg.rewards.name, "components": names, "weights": fused["weights"], "tau": tau,
              "tau_quantile": quantile, "stage_one": fused["stage_one"], "chosen": fused["chosen"],
              "constraints": {"min_rule_pass": fc.min_rule_pass, "min_in_distribution": fc.min_in_distribution,
                              "met": fused["constraints_met"]},
              "data": {"weeks": list(fc.weeks), "impressions": int(len(rows)), "panels": len(panels),
                       "ctr": float(clicks.mean()), "candidates": len(cand_texts),
                       "candidate_rule_pass": float(cand_pass.mean()) if cand_pass is not None else None,
                       "candidate_in_distribution": float(cand_in_dist.mean()) if cand_in_dist is not None else None},
              "grid_size": fused["grid_size"], "front": fused["front"], "inputs": {s: inputs[s]["key"] for s in inputs},
              "seconds": time.time() - start}
    with atomic_dir(final) as tmp:
        (tmp / "fusion_weights.json").write_text(json.dumps(result, indent=2))
    (out_dir / "fusion_weights.json").write_text(json.dumps(result, indent=2))
    log_metrics(loggers, flat_metrics(result))
    write_job_metrics(cfg, "fusion", flat_metrics(result))
    print(f"\nfusion ({cfg.rewards.name}): stage one {_fmt(result['stage_one']['weights'])} (click AUC "
          f"{result['stage_one']['auc']:.3f}); chosen {_fmt(result['weights'])} (AUC {result['chosen']['auc']:.3f}, "
          f"rule pass {result['chosen']['rule_pass']:.2f}, in-distribution {result['chosen']['in_distribution']:.2f}); "
          f"τ {tau:.3f}; {len(result['front'])} Pareto points of {result['grid_size']} -> {final}")
    return result


def flat_metrics(result: dict) -> dict:
    return {**{f"fusion/weight/{n}": w for n, w in result["weights"].items()},
            "fusion/auc": result["chosen"]["auc"], "fusion/stage_one_auc": result["stage_one"]["auc"]}


def _fmt(weights: dict) -> str:
    return ", ".join(f"{n} {w:.3f}" for n, w in weights.items())
