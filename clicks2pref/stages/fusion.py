"""Stage `fusion` (SPEC 5.4): weights of the reward components from held-out clicks, then a constrained grid.

Reads the click logs, the SFT policy (the reference of the `ppl` term and the source of candidate
panels) and the reward models; scores every distinct panel of the held-out weeks (`fusion.weeks`,
not used to train the reward models) with each enabled component of `rewards`, fits clicks on the
scores (stage one) and searches the grid around the fit under the rule-pass and in-distribution
constraints (stage two; `clicks2pref.rewards.fusion`). Writes `artifacts/fusion/<key>/fusion_weights.json`
(weights, τ, stage one's fit, the Pareto front searched) and copies it to the run folder.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from clicks2pref.data.io import load_impressions
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.errors import ClickLogError
from clicks2pref.loggers import log_metrics
from clicks2pref.models.generate import GenerationConfig, generate
from clicks2pref.report import write_job_metrics
from clicks2pref.rewards.base import RewardBatch, RewardResources, context_key
from clicks2pref.rewards.composite import build_components, enabled
from clicks2pref.rewards.fusion import fuse
from clicks2pref.rewards.ppl import ReferenceScorer, calibrate_tau
from clicks2pref.rewards.rule import RuleReward
from clicks2pref.stages import artifacts
from clicks2pref.stages.policies import load_sft_policy

log = logging.getLogger(__name__)


def run(cfg, loggers=()) -> dict:
    fc = cfg.fusion
    names = enabled(cfg.rewards)
    # 1. what fusion reads: the SFT policy (reference and candidate sampler), the reward models, the logs
    inputs = artifacts.upstream(cfg, "fusion", loggers)
    key = artifacts.key(cfg, "fusion", inputs)
    if (result := artifacts.reuse(cfg, "fusion", key)) is not None:
        return publish(cfg, result, loggers, fresh=False)

    # 2. the held-out weeks' impressions (clicks to fit) and the rest (τ's calibration panels)
    start = time.time()
    held, rest = held_out_weeks(cfg)

    # 3. the components, with the SFT policy as the perplexity reference, and τ
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    template = cfg.prompt[inputs["sft"]["template"]]
    scorer = ReferenceScorer(model, tok, template, cfg.grpo.temperature, cfg.grpo.micro_batch_size)
    resources = RewardResources(rm_models(cfg, inputs), scorer, cfg.paths.model_cache,
                                cfg.reward_model.backbone.trust_remote_code)
    components = build_components(cfg.rewards, resources)
    tau, quantile = calibrate(cfg, components, scorer, rest)

    # 4. stage one's data: component scores of held-out panels, one row per impression
    panels, rows, clicks = panel_table(held)
    k = len(cfg.simulator.examination)
    logged = RewardBatch([p["context"] for p in panels], [format_suggestions(p["suggestions"]) for p in panels], k)
    panel_scores = score_matrix(components, logged)
    log.info("fusion: %d held-out impressions (%d panels, CTR %.3f) scored by %s", len(rows), len(panels),
             clicks.mean(), ", ".join(names))

    # 5. stage two's candidates: reference-policy samples for held-out contexts, and the constraints on them
    n_cand, cand_scores, cand_pass, cand_in_dist = candidate_scores(cfg, components, scorer, model, tok, template,
                                                                    held, tau)

    # 6. fit, grid, choose; the weights (with what they were fitted on) are the artifact
    fused = fuse(names, panel_scores[rows], clicks, fc, cand_scores, cand_pass, cand_in_dist, cfg.seed)
    mean = lambda x: float(x.mean()) if x is not None else None  # noqa: E731
    result = {"key": key, "rewards": cfg.rewards.name, "components": names, "weights": fused["weights"], "tau": tau,
              "tau_quantile": quantile, "stage_one": fused["stage_one"], "chosen": fused["chosen"],
              "constraints": {"min_rule_pass": fc.min_rule_pass, "min_in_distribution": fc.min_in_distribution,
                              "met": fused["constraints_met"]},
              "data": {"weeks": list(fc.weeks), "impressions": int(len(rows)), "panels": len(panels),
                       "ctr": float(clicks.mean()), "candidates": n_cand, "candidate_rule_pass": mean(cand_pass),
                       "candidate_in_distribution": mean(cand_in_dist)},
              "grid_size": fused["grid_size"], "front": fused["front"], "inputs": {s: inputs[s]["key"] for s in inputs},
              "seconds": time.time() - start}
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "fusion", key)) as tmp:
        (tmp / "fusion_weights.json").write_text(json.dumps(result, indent=2))
    return publish(cfg, result, loggers, fresh=True)


def held_out_weeks(cfg) -> tuple[list[dict], list[dict]]:
    """Impressions of `fusion.weeks` (not used to train the reward models) and the rest (all, if none)."""
    source = artifacts.logs_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    held = [r for r in records if r["week"] in cfg.fusion.weeks]
    if not held:
        raise ClickLogError(f"fusion.weeks {list(cfg.fusion.weeks)}: no impressions in those weeks (weeks present: "
                            f"{sorted({r['week'] for r in records})}); set fusion.weeks", str(source),
                            field="fusion.weeks")
    return held, [r for r in records if r["week"] not in cfg.fusion.weeks] or records


def calibrate(cfg, components: dict, scorer, records: list[dict]) -> tuple[float, float]:
    """(τ, its quantile): a quantile of logged panels' reference log-PPL, used by `ppl` and the constraint."""
    if "ppl" in components and components["ppl"].tau is not None:
        return components["ppl"].tau, cfg.rewards.ppl.quantile
    quantile = cfg.rewards.ppl.quantile if "ppl" in components else 0.95
    calibration_panels = cfg.rewards.ppl.calibration_panels if "ppl" in components else 64
    contexts, panels = logged_panels(records, calibration_panels, cfg.seed)
    tau = calibrate_tau(scorer(contexts, panels), quantile)
    if "ppl" in components:
        components["ppl"].tau = tau
    return tau, quantile


def candidate_scores(cfg, components: dict, scorer, model, tok, template, held: list[dict], tau: float):
    """(number of candidates, their component scores [C, S, K], rule pass [C, S], log-PPL ≤ τ [C, S])."""
    k, S = len(cfg.simulator.examination), cfg.fusion.samples_per_context
    contexts, texts = candidates(cfg, model, tok, template, held, k)
    if not texts:
        return 0, None, None, None
    batch = RewardBatch(contexts, texts, k)
    scores = score_matrix(components, batch).reshape(-1, S, len(components))
    passes = (components.get("rule") or RuleReward()).passes(batch).numpy().reshape(-1, S)
    log_ppl = batch.ref_log_ppl if batch.ref_log_ppl is not None else scorer(batch.contexts, batch.completions)
    return len(texts), scores, passes, (np.asarray(log_ppl) <= tau).reshape(-1, S)


def rm_models(cfg, inputs: dict) -> dict:
    """kind -> trained reward-model folder of this config's stage=rm artifact (none when rm was not read)."""
    if "rm" not in inputs:
        return {}
    folder = artifacts.artifact_path(cfg, "rm", inputs["rm"]["key"])
    return {kind: str(folder / kind) for kind in inputs["rm"]["models"]}


def logged_panels(records: list[dict], n: int, seed: int) -> tuple[list[list[dict]], list[str]]:
    """Up to n distinct logged panels (context, formatted text), a seeded sample: τ's calibration set."""
    panels: dict = {}
    for r in records:
        panels.setdefault((context_key(r["context"]), tuple(r["suggestions"])), r)
    keys = sorted(panels)
    random.Random(seed).shuffle(keys)
    chosen = [panels[k] for k in keys[:n]]
    return [r["context"] for r in chosen], [format_suggestions(r["suggestions"]) for r in chosen]


def panel_table(records: list[dict]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Distinct panels of the records, and per impression its panel index and click (any position)."""
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
    cols = [torch.as_tensor(c(batch), dtype=torch.float64).numpy() for c in components.values()]
    return np.stack(cols, axis=1) if cols else np.zeros((len(batch), 0))


def candidates(cfg, model, tok, template, records: list[dict], k: int) -> tuple[list[list[dict]], list[str]]:
    """Panels the reference policy samples for held-out logged contexts, `samples_per_context` each (grouped)."""
    fc = cfg.fusion
    contexts = list({context_key(r["context"]): r["context"] for r in records}.values())
    random.Random(cfg.seed).shuffle(contexts)
    contexts = contexts[:fc.candidate_contexts]
    if not contexts or fc.samples_per_context < 1:
        return [], []
    g = cfg.grpo  # sampled as GRPO samples
    gen = GenerationConfig(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                           top_k=g.top_k, do_sample=True, batch_size=cfg.policy.generation.batch_size)
    texts = generate(model, tok, [build_messages(template, c) for c in contexts], gen,
                     num_return_sequences=fc.samples_per_context, seed=cfg.seed)
    return [c for c in contexts for _ in range(fc.samples_per_context)], texts


def publish(cfg, result: dict, loggers, fresh: bool) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fusion_weights.json").write_text(json.dumps(result, indent=2))
    write_job_metrics(cfg, "fusion", flat_metrics(result))
    log_metrics(loggers, flat_metrics(result))  # a reused stage's stored metrics too: a sweep's runs are complete
    if fresh:
        chosen, where = result["chosen"], artifacts.artifact_path(cfg, "fusion", result["key"])
        print(f"\nfusion ({result['rewards']}): stage one {_fmt(result['stage_one']['weights'])} (click AUC "
              f"{result['stage_one']['auc']:.3f}); chosen {_fmt(result['weights'])} (AUC {chosen['auc']:.3f}, "
              f"rule pass {chosen['rule_pass']:.2f}, in-distribution {chosen['in_distribution']:.2f}); "
              f"τ {result['tau']:.3f}; {len(result['front'])} Pareto points of {result['grid_size']} -> {where}")
    return result


def flat_metrics(result: dict) -> dict:
    return {**{f"fusion/weight/{n}": w for n, w in result["weights"].items()},
            "fusion/auc": result["chosen"]["auc"], "fusion/stage_one_auc": result["stage_one"]["auc"]}


def _fmt(weights: dict) -> str:
    return ", ".join(f"{n} {w:.3f}" for n, w in weights.items())
