"""Step 5, fusion (SPEC 5.4): the reward's composition from clicks on the policy RL will train.

With `fusion.logs=policy` (the default) the clicks are the SFT policy's own: the week stage `serve` logged
for fusion (a GRPO group of panels per training context, simulated users' sampled clicks; the reward models
never trained on it; the oracle is never read). Every enabled component of `rewards` scores those panels as
the policy wrote them; GaRM's κ is chosen from `fusion.kappa_grid` by how well GaRM alone ranks the clicked
impressions; stage one fits clicks on the scores, centred within each context (`within_context`: a GRPO
advantage only compares panels of one context), and stage two searches the grid around the fit under the
rule-pass and in-distribution constraints on those same panels (`clicks2pref.rewards.fusion`).
`fusion.logs=clicks` fits on held-out weeks of the collected logs instead (the baseline policy's panels). Without
the simulator (`simulator=none`, or a team's own logs) there are no simulated users to serve: fusion fits on the
held-out conversations' `val` share of the logs (`clicks2pref.data.log_splits`).
Writes `artifacts/fusion/<key>/fusion_weights.json` (weights, κ, τ, stage one's fit, the Pareto front
searched) and copies it to the run folder.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from clicks2pref.data.io import load_impressions
from clicks2pref.data.log_splits import check_weeks, weeks_present
from clicks2pref.data.offline_mode import log_split, uses_simulator
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.errors import ClickLogError
from clicks2pref.loggers import log_metrics
from clicks2pref.data.traffic import served
from clicks2pref.models.generate import generate, group_sampling
from clicks2pref.report import write_job_metrics
from clicks2pref.rewards.base import RewardBatch, RewardResources, context_key
from clicks2pref.rewards.composite import build_component, build_components
from clicks2pref.rewards.fusion import centre_within, click_auc, fuse
from clicks2pref.rewards.ppl import ReferenceScorer, calibrate_tau, logged_panels
from clicks2pref.rewards.rule import RuleReward
from clicks2pref.stages import artifacts
from clicks2pref.models.policies import load_sft_policy

log = logging.getLogger(__name__)


def run(cfg, inputs: dict, loggers=()) -> dict:
    fc = cfg.fusion
    # 1. what fusion reads: the SFT policy (reference and candidate sampler), the reward models, the logs
    key = artifacts.key(cfg, "fusion", inputs)
    if (result := artifacts.reuse(cfg, "fusion", key)) is not None:
        return publish(cfg, result, loggers, fresh=False)

    # 2. the components, with the SFT policy as the perplexity reference, and τ from the collected logs
    start = time.time()
    logs = fc.logs if uses_simulator(cfg) else "clicks"  # no simulated users: the held-out slice of the logs
    held, rest = held_out_weeks(cfg) if logs == "clicks" else ([], collected_logs(cfg))
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    template = cfg.prompt[inputs["sft"]["template"]]
    scorer = ReferenceScorer(model, tok, template, cfg.grpo.temperature, cfg.grpo.micro_batch_size)
    resources = RewardResources(artifacts.rm_models(cfg, inputs), scorer, cfg.paths.model_cache,
                                cfg.reward_model.backbone.trust_remote_code)
    components = build_components(cfg.rewards, resources)
    tau, quantile = calibrate(cfg, components, scorer, rest)
    k = len(cfg.simulator.examination)

    # 3. the clicks to fit: a logged week of the SFT policy itself (its own panels, simulated users' sampled
    #    clicks), whose panels are also stage two's candidates; or (logs=clicks) held-out weeks of the logs
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "fusion", key)) as tmp:
        source, records = logs, []
        if source == "policy":
            records, cand_contexts, cand_texts = served(artifacts.artifact_path(cfg, "serve", inputs["serve"]["key"]),
                                                        inputs["serve"]["fusion_week"], cfg.data.format,
                                                        cfg.data.on_invalid)
            if not records:
                source = "clicks"
                log.warning("fusion: every panel of the SFT policy's week was empty (nothing to show users); the "
                            "weights are fitted on the click logs' held-out impressions instead (fusion.logs=clicks)")
        if source == "policy":  # each impression's panel as the policy wrote it (as GRPO will score it)
            logged = RewardBatch(cand_contexts, cand_texts, k)
            rows = np.array([int(r["panel_id"].rsplit("-p", 1)[1]) for r in records])
            clicks = np.array([int(any(r["clicks"])) for r in records])
            samples = cfg.serve.panels_per_context
        else:  # each distinct logged panel in the order it was shown
            records = held or held_out_weeks(cfg)[0]
            panels, rows, clicks = panel_table(records)
            logged = RewardBatch([p["context"] for p in panels], [format_suggestions(p["suggestions"]) for p in panels],
                                 k)
            cand_contexts, cand_texts = candidates(cfg, model, tok, template, records, k, fc.samples_per_context)
            samples = fc.samples_per_context
        groups = [context_key(c) for c in logged.contexts]

        # 4. κ of GaRM from the same clicks (GaRM alone, within contexts), then every component's scores
        kappa, kappa_auc = fit_kappa(cfg, components, resources, logged, groups, rows, clicks)
        raw_scores = score_matrix(components, logged)
        panel_scores = centre_within(raw_scores, groups) if fc.within_context else raw_scores
        log.info("fusion: %d impressions (%d panels of %d contexts, CTR %.3f, %s logs) scored by %s", len(rows),
                 len(logged), len(set(groups)), clicks.mean(), source, ", ".join(components))

        # 5. stage two's constraints on the candidates (the logged panels themselves when the policy logged them):
        #    rule pass and in-distribution of each context's best
        candidate_batch = logged if source == "policy" else RewardBatch(cand_contexts, cand_texts, k)
        n_cand, cand_scores, cand_pass, cand_in_dist = candidate_scores(
            components, scorer, candidate_batch, samples, tau, raw_scores if source == "policy" else None)

        # 6. fit, grid, choose; the weights (with what they were fitted on) are the artifact
        fused = fuse(list(components), panel_scores[rows], clicks, fc, cand_scores, cand_pass, cand_in_dist,
                     cfg.seed)
        mean = lambda x: float(x.mean()) if x is not None else None  # noqa: E731
        result = {"key": key, "rewards": cfg.rewards.name, "components": list(components),
                  "weights": fused["weights"], "kappa": kappa, "kappa_auc": kappa_auc, "tau": tau,
                  "tau_quantile": quantile, "stage_one": fused["stage_one"], "chosen": fused["chosen"],
                  "constraints": {"min_rule_pass": fc.min_rule_pass, "min_in_distribution": fc.min_in_distribution,
                                  "met": fused["constraints_met"]},
                  "data": {"logs": source, "weeks": sorted({r["week"] for r in records}),
                           "impressions": int(len(rows)), "panels": len(logged), "contexts": len(set(groups)),
                           "ctr": float(clicks.mean()), "within_context": bool(fc.within_context),
                           "candidates": n_cand, "candidate_rule_pass": mean(cand_pass),
                           "candidate_in_distribution": mean(cand_in_dist)},
                  "grid_size": fused["grid_size"], "front": fused["front"],
                  "inputs": {s: inputs[s]["key"] for s in inputs}, "seconds": time.time() - start}
        (tmp / "fusion_weights.json").write_text(json.dumps(result, indent=2))
    return publish(cfg, result, loggers, fresh=True)


def fit_kappa(cfg, components: dict, resources, logged, groups: list, rows: np.ndarray, clicks: np.ndarray
              ) -> tuple[Optional[float], dict]:
    """GaRM's κ from `fusion.kappa_grid`: the value whose GaRM panel score (alone, centred within contexts
    when `within_context`) best ranks the clicked impressions (AUC); the first on ties. Replaces the GaRM
    component in `components` by the chosen one. (None, {}) when GaRM is off, the grid is empty, or the
    preset keeps its own κ (`rewards.fit_kappa: false`, e.g. mean_only's κ = 0)."""
    if "garm" not in components or not cfg.fusion.kappa_grid or not cfg.rewards.fit_kappa:
        return None, {}
    aucs, built = {}, {}
    for kappa in cfg.fusion.kappa_grid:
        rewards = OmegaConf.merge(cfg.rewards, {"garm": {"kappa": float(kappa)}})
        built[kappa] = build_component(rewards, "garm", resources)
        score = score_matrix({"garm": built[kappa]}, logged)
        if cfg.fusion.within_context:
            score = centre_within(score, groups)
        aucs[float(kappa)] = click_auc(score[rows, 0], clicks)
    best = max(aucs, key=lambda x: -np.inf if np.isnan(aucs[x]) else aucs[x])
    components["garm"] = built[best]
    log.info("fusion: GaRM κ %s (click AUC by κ: %s)", best, ", ".join(f"{x:g} {a:.3f}" for x, a in aucs.items()))
    return best, aucs


def collected_logs(cfg) -> list[dict]:
    return load_impressions(artifacts.logs_source(cfg), cfg.data.on_invalid)


def held_out_weeks(cfg) -> tuple[list[dict], list[dict]]:
    """(impressions fitted on, the rest): without the simulator, the held-out conversations' `val` share
    (`data.holdout`; the reward models and the policy never trained on them); with it, `fusion.weeks` (null:
    the logs' last week, the reward models' IID test week), a week the logs lack failing with the weeks present."""
    source = artifacts.logs_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    if not uses_simulator(cfg):
        split = log_split(cfg, records)
        if not split.val:
            raise ClickLogError(f"no held-out conversation for fusion to fit on ({split.describe()}); raise "
                                "data.holdout.fraction or data.holdout.val_fraction", str(source), field="data.holdout")
        return split.val, split.train
    check_weeks(cfg.fusion.weeks, records, "fusion.weeks", source)
    weeks = set(cfg.fusion.weeks if cfg.fusion.weeks is not None else weeks_present(records)[-1:])
    held = [r for r in records if r["week"] in weeks]
    return held, [r for r in records if r["week"] not in weeks] or records


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


def candidate_scores(components: dict, scorer, batch: RewardBatch, S: int, tau: float,
                     scores: Optional[np.ndarray] = None):
    """(number of candidates, their component scores [C, S, K], rule pass [C, S], log-PPL ≤ τ [C, S]) of
    candidate panels that come in consecutive groups of `S` per context (`scores`: already computed)."""
    if not len(batch):
        return 0, None, None, None
    scores = (score_matrix(components, batch) if scores is None else scores).reshape(-1, S, len(components))
    passes = (components.get("rule") or RuleReward()).passes(batch).numpy().reshape(-1, S)
    log_ppl = batch.ref_log_ppl if batch.ref_log_ppl is not None else scorer(batch.contexts, batch.completions)
    return len(batch), scores, passes, (np.asarray(log_ppl) <= tau).reshape(-1, S)


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


def candidates(cfg, model, tok, template, records: list[dict], k: int, samples: int
               ) -> tuple[list[list[dict]], list[str]]:
    """Panels the reference policy samples for held-out logged contexts, `samples` each (grouped)."""
    contexts = list({context_key(r["context"]): r["context"] for r in records}.values())
    random.Random(cfg.seed).shuffle(contexts)
    contexts = contexts[:cfg.fusion.candidate_contexts]
    if not contexts or samples < 1:
        return [], []
    texts = generate(model, tok, [build_messages(template, c) for c in contexts], group_sampling(cfg),
                     num_return_sequences=samples, seed=cfg.seed)
    return [c for c in contexts for _ in range(samples)], texts


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
