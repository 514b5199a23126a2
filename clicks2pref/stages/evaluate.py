"""Step 7, evaluate: policies side by side on held-out contexts, scored by the oracle.

For each policy (the prompted baseline, SFT, GRPO, or any saved model folder): oracle CTR with a
bootstrap CI, the paired lift and GSB against the reference policy, the format pass rate and
diversity; plus the reward models' calibration report. Upstream stages run (or are reused from the
artifact cache) as needed, so `stage=evaluate` alone reproduces the paper's comparison.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

import numpy as np

from clicks2pref.data.io import load_impressions
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.offline_mode import log_split, uses_simulator
from clicks2pref.data.simulator import build_simulator
from clicks2pref.errors import ClickLogError, Clicks2PrefError, ConfigError, ModelNotFoundError
from clicks2pref.eval.best_of import best_of_n
from clicks2pref.eval.offline import build_estimators
from clicks2pref.eval.offline_report import estimated_per_context, evaluate_offline
from clicks2pref.eval.heldout import heldout_contexts, score_policy, with_ci
from clicks2pref.eval.policy import baseline_id
from clicks2pref.eval.power import variance_measurements
from clicks2pref.eval.results_report import MEASURED, publish, summarize
from clicks2pref.eval.rm_calibration import calibration_section
from clicks2pref.eval.reference_panels import nearness_to_canned, score_reference_panels
from clicks2pref.manifest import verify_given
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.rewards.base import RewardBatch, RewardResources
from clicks2pref.rewards.composite import build_component
from clicks2pref.rewards.diversity import DiversityReward, distinct_n
from clicks2pref.models.policies import artifact_meta, load_grpo_policy, load_sft_policy
from clicks2pref.rewards.build import build_reward
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)


def run(cfg, inputs: dict, loggers=()) -> dict:
    ev = cfg.eval
    # 1. the stages whose policies and reward models are evaluated (each run or reused)
    sources = {name: policy_source(cfg, name, inputs) for name in ev.policies}
    identities = "|".join(src[0] for src in sources.values())
    offline = not uses_simulator(cfg)  # its report holds its CIs: a CI setting is part of what it measures
    key = artifacts.key(cfg, "evaluate", inputs, extra=identities + (f"|{ci_settings(cfg)}" if offline else ""))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (measured := artifacts.reuse(cfg, "evaluate", key)) is not None:  # the same policies, settings and code
        return publish(cfg, measured if offline else summarize(cfg, measured), loggers, fresh=False)

    if offline:  # a team's own logs: click-model estimates on held-out logged conversations
        return run_offline(cfg, inputs, sources, key, out_dir, loggers)

    # 2. every policy on the same held-out contexts (cached evaluations), with the diversity of its panels
    start = time.time()
    sim = build_simulator(cfg.simulator)
    contexts = heldout_contexts(cfg, sim, ev)
    diversity = DiversityReward(ev.diversity_embedder)
    results = {}
    for name in ev.policies:
        policy_id, load, template, meta = sources[name]
        m = score_policy(cfg, ev, sim, contexts, policy_id, load, cfg.prompt[template], diversity)
        m.update(template=template, rl_logs=meta.get("rl_logs"))
        results[name] = m
        log.info("evaluate: %-10s oracle CTR %.4f [%.4f, %.4f] format %.2f", name, m["oracle_ctr"], m["ci_low"],
                 m["ci_high"], m["format_rate"])

    # 3. best-of-n: the reward's pick among each policy's samples
    reranked = [p for p in ev.best_of.policies if p in results] if ev.best_of.n else []
    best = rerank(cfg, ev, inputs, results, reranked, diversity) if reranked else []

    # 4. the floor and the ceiling (canned and ideal panels on the same contexts), how near each policy is the floor
    results.update(reference_rows(cfg, ev, sim, contexts, diversity, results))
    # what was measured, per context: every CI, lift and GSB is computed from it when the report is rendered
    measured = {"policies": {name: src[0] for name, src in sources.items()},  # what was evaluated: cache identities
                "split": ev.split, "contexts": len(contexts), "samples_per_context": ev.samples_per_context,
                "results": {name: {k: m[k] for k in MEASURED if k in m} for name, m in results.items()},
                "best_of": best, "variance": variance_measurements(results, list(ev.policies)),
                "examples": [{"context": contexts[i], **{n: results[n]["outputs"][i] for n in results}}
                             for i in range(min(5, len(contexts)))]}

    # the offline estimator (the reward models' click model) beside the oracle, per context: its bias per method
    if "rm" in inputs and results:
        measured["estimated"] = estimated(cfg, inputs, results, [*ev.policies, *(r["policy"] for r in best)])

    # 5. the reward models' calibration on the IID week and the GRPO policy's logs (OOD)
    if ev.calibration:
        ood = results["grpo"].get("rl_logs") if "grpo" in results else None
        measured["calibration"] = calibration_section(cfg, artifacts.artifact_path(cfg, "rm", inputs["rm"]["key"]),
                                                      inputs["rm"], ood)
    measured["seconds"] = time.time() - start
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "evaluate", key)) as tmp:
        (tmp / "evaluation.json").write_text(json.dumps(measured, indent=2))
    return publish(cfg, summarize(cfg, measured), loggers)


def ci_settings(cfg) -> str:
    """The report settings the evaluate key leaves out (its spec's `exclude`), for an offline report, which holds
    its CIs."""
    return json.dumps({k: OmegaConf.to_container(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, k)) else v
                       for k in artifacts.SPECS["evaluate"].exclude}, sort_keys=True)


def run_offline(cfg, inputs: dict, sources: dict, key: str, out_dir: Path, loggers) -> dict:
    """No simulator: every policy on the held-out logged conversations (`data.holdout`, the `test` share), by the
    click model the reward models learned, against the logged policy's own panels there; the A/B plan."""
    ev, start = cfg.eval, time.time()
    estimators, primary = build_estimators(artifacts.rm_models(cfg, inputs), ev.offline.estimator,
                                           cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    split = log_split(cfg, load_impressions(artifacts.logs_source(cfg), cfg.data.on_invalid))
    if not split.test:
        raise ClickLogError(f"no held-out logged conversation to evaluate on ({split.describe()}); raise "
                            "data.holdout.fraction or lower data.holdout.val_fraction", field="data.holdout")
    policies = {name: (load, cfg.prompt[template]) for name, (_, load, template, _) in sources.items()}
    reranks = ev.best_of.n and set(ev.best_of.policies) & set(policies)
    report = evaluate_offline(cfg, estimators, primary, split.test, policies,
                              reward_component(cfg, ev.best_of.reward, inputs) if reranks else None,
                              DiversityReward(ev.diversity_embedder))
    report["split"] = split.describe()
    if ev.calibration:
        report["calibration"] = calibration_section(cfg, artifacts.artifact_path(cfg, "rm", inputs["rm"]["key"]),
                                                    inputs["rm"], None)
    report["seconds"] = time.time() - start
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "evaluate", key)) as tmp:
        (tmp / "evaluation.json").write_text(json.dumps(report, indent=2))
    return publish(cfg, report, loggers)


def estimated(cfg, inputs: dict, results: dict, names: list[str]) -> dict:
    """Each evaluated policy's estimated CTR per context (the reward models' click model, model-based), to be set
    beside the oracle's when the report is rendered."""
    ev = cfg.eval
    estimators, primary = build_estimators(artifacts.rm_models(cfg, inputs), ev.offline.estimator,
                                           cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    shown = {n: results[n] for n in dict.fromkeys(names) if n in results}
    return estimated_per_context(estimators[primary], shown, results[ev.policies[0]]["conversations"])


def rerank(cfg, ev, inputs: dict, results: dict, policies: list[str], diversity) -> list[dict]:
    """Adds "<policy>+bo<n>" to `results` for each of `policies`; returns what the best-of rows are computed from:
    the CTR of serving a random one of the same n samples, per context, and the reward's within-context Spearman
    with the oracle over the n samples."""
    bo = ev.best_of
    component = reward_component(cfg, bo.reward, inputs)
    rows = []
    for name in policies:
        m = results[name]
        flat = [s for group in m["samples"] for s in group]
        contexts = [c for c, group in zip(m["conversations"], m["samples"]) for _ in group]
        batch = RewardBatch(contexts, flat, len(cfg.simulator.examination))
        scores = np.asarray(component(batch), dtype=float).reshape(len(m["samples"]), -1)
        best = best_of_n(m, scores, bo.n)
        k = len(cfg.simulator.examination)
        best["format_rate"] = float(np.mean([parse_suggestions(o, k).well_formed for o in best["outputs"]]))
        panels = [parse_suggestions(o, k).suggestions for o in best["outputs"]]
        best["distinct_2"], best["mean_pairwise_cosine"] = distinct_n(panels, 2), diversity.mean_pairwise_cosine(panels)
        label = f"{name}+bo{bo.n}"
        results[label] = with_ci(best, ev.bootstrap_samples, ev.ci_level, cfg.seed, ev.ci_clusters)
        # against serving one of the same n samples at random: its expected CTR is their mean
        rows.append({"policy": label, "of": name, "reward": bo.reward,
                     "random_ctr": [float(np.mean(row[:bo.n])) for row in m["sample_ctr"]],
                     "reward_spearman": best["reward_spearman"], "oracle_best": best["oracle_max_ctr"],
                     "contexts": best["spearman_contexts"]})
        log.info("evaluate: %s oracle CTR %.4f; reward ρ with the oracle within contexts %.3f", label,
                 results[label]["oracle_ctr"], best["reward_spearman"])
    return rows


def reference_rows(cfg, ev, sim, contexts: list, diversity, results: dict) -> dict:
    """The canned and ideal rows (`clicks2pref.eval.reference_panels`), and each policy's nearness to canned."""
    rp = ev.reference_panels
    if not rp.canned and not rp.ideal:
        return {}
    refs = score_reference_panels(sim, contexts, list(rp.canned or ["{title}"]), ev, cfg.seed, diversity)
    k = len(cfg.simulator.examination)
    for name, m in [*results.items(), *refs.items()]:
        panels = m.get("panels") or [parse_suggestions(o, k).suggestions for o in m["outputs"]]
        m["canned_cosine"] = nearness_to_canned(panels, refs["canned"]["panels"], diversity.similarity) \
            if rp.canned else float("nan")
    for name, m in refs.items():
        log.info("evaluate: %-10s oracle CTR %.4f [%.4f, %.4f] (reference panel)", name, m["oracle_ctr"],
                 m["ci_low"], m["ci_high"])
    return {n: m for n, m in refs.items() if (n == "canned" and rp.canned) or (n == "ideal" and rp.ideal)}


def reward_component(cfg, name: str, inputs: dict):
    """The `rewards.<name>` component, set up with this config's trained reward models; for `composite`, a
    panel scorer with the reward GRPO trains on (`rewards.build.build_reward`: the fused weights and κ, the SFT
    policy as the perplexity reference, failing panels at their context's minimum)."""
    if name == "composite":
        return composite_reward(cfg, inputs)
    if cfg.rewards.get(name) is None:
        raise ConfigError(f"'{name}' is null in this rewards preset ({cfg.rewards.name}); pick an enabled component",
                          "eval.best_of.reward")
    resources = RewardResources(artifacts.rm_models(cfg, inputs), None,
                                cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    return build_component(cfg.rewards, name, resources)


def composite_reward(cfg, inputs: dict):
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    fused = inputs.get("fusion")
    records = [] if fused and fused.get("tau") is not None else load_impressions(artifacts.logs_source(cfg),
                                                                                 cfg.data.on_invalid)
    reward, _ = build_reward(cfg, model, tok, cfg.prompt[inputs["sft"]["template"]], None,
                                  artifacts.rm_models(cfg, inputs), fused, records)
    log.info("evaluate: best-of by the composite reward %s", reward.describe())
    return lambda batch: reward(batch)[0]


def policy_source(cfg, name: str, inputs: dict):
    """(identity in the evaluation cache, load() -> (model, tokenizer), template name, artifact metadata)
    for `baseline`, `sft`, `grpo` (their stages' results in `inputs`) or a saved folder."""
    base = OmegaConf.to_object(cfg.policy.model)
    if name == "baseline":
        template = inputs["collect"]["best_template"] if "collect" in inputs else artifacts.resolve_template(cfg)
        return baseline_id(cfg), lambda: load_causal_lm(base, cfg.paths.model_cache, seed=cfg.seed), template, {}
    if name in ("sft", "grpo"):
        folder = artifacts.artifact_path(cfg, name, inputs[name]["key"])
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"eval.policies: '{name}' is neither baseline, sft, grpo nor an existing folder")
        if problem := verify_given(folder):
            raise ModelNotFoundError(f"eval.policies: {folder} fails verification: {problem}")
    if (folder / "sft.json").exists():
        meta = artifact_meta(folder, "sft")
        return f"sft:{meta['key']}", loads(folder, lambda: load_sft_policy(folder, cfg, merge=True)), \
            meta["template"], meta
    if (folder / "grpo.json").exists():
        meta = artifact_meta(folder, "grpo")
        if meta.get("rl_logs"):  # recorded as an absolute path; the folder may have moved since
            meta["rl_logs"] = str(folder / Path(meta["rl_logs"]).name)
        return f"grpo:{meta['key']}", loads(folder, lambda: load_grpo_policy(folder, cfg)), meta["template"], meta
    stamp = max((p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()), default=0)
    load = lambda: load_causal_lm(replace(base, name=str(folder), lora=None), cfg.paths.model_cache)  # noqa: E731
    return f"path:{folder.resolve()}@{stamp}", loads(folder, load), artifacts.resolve_template(cfg), {}


def loads(folder: Path, load):
    """`load`, with anything it raises on a broken folder turned into one line naming the folder."""
    def checked():
        try:
            return load()
        except Clicks2PrefError:
            raise
        except Exception as e:  # a truncated or foreign file: one line, not a traceback from deep inside torch
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelNotFoundError(f"eval.policies: {folder} does not load: {type(e).__name__}: {first}") from None
    return checked


