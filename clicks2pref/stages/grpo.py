"""Step 6, grpo (paper stage 4): GRPO on the composite reward, evaluated against the SFT policy (SPEC 5.5).

`optimizer=` picks what trains the policy (`clicks2pref.lit.optimizers`: grpo, rft, online_dpo, dpo_clicks);
everything else here (reward, monitor, checkpoint selection, evaluation, RL logs, artifact) is shared, and the
result holds the training's compute (`clicks2pref.lit.compute`) so methods compare at equal compute.

Reads the SFT policy (`stage=sft`, run first if its artifact is missing), the reward models
(`stage=rm`), the fused weights (`stage=fusion`, when `rewards.weights=fusion`) and the click logs'
contexts as prompts. Trains LoRA adapters on the SFT weights with `clicks2pref.lit.grpo_module`
(the reference is the SFT policy itself: the same weights with the adapters disabled), watches for
reward hacking on a probe set (`clicks2pref.eval.monitor`), then on held-out test contexts measures
oracle CTR (bootstrap CI), GSB, format rate and diversity of GRPO vs. SFT, and logs one week of
impressions from the GRPO policy through the simulator: the "Week 4-RFT" OOD split for the reward
models' calibration report (`stage=rm data.ood_logs=<that file>`).

Writes `artifacts/grpo/<key>/`: `policy/` (the adapter), `grpo.json`, `grpo.md`, `completions.jsonl`,
`rl_week<k>.jsonl`; reports are copied to the run folder. A killed run resumes from the last
Lightning checkpoint in `artifacts/grpo/.work-<key>/`.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from clicks2pref.data.io import load_impressions, write_impressions, write_jsonl
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.log_splits import contexts_of
from clicks2pref.data.offline_mode import log_split, training_records, uses_simulator
from clicks2pref.data.simulator import build_simulator, context_splits
from clicks2pref.data.traffic import clicked_share, log_week, sample_contexts
from clicks2pref.errors import ConfigError
from clicks2pref.eval.heldout import heldout_contexts, paired, score_policy
from clicks2pref.eval.monitor import RewardHackingMonitor
from clicks2pref.eval.offline import build_estimators, compare_policies
from clicks2pref.eval.offline_monitor import offline_monitor
from clicks2pref.eval.training import write_training_plot
from clicks2pref.eval.policy import baseline_id
from clicks2pref.lit.checkpoints import resume_checkpoint
from clicks2pref.config.optimizer import policy_samples, samples_per_step, steps
from clicks2pref.data.panel_pairs import pair_items
from clicks2pref.lit.grpo_module import PromptData
from clicks2pref.lit.optimizers import NAMES, NEEDS_REFERENCE, build_module
from clicks2pref.loggers import log_metrics, log_table
from clicks2pref.models.generate import generate
from clicks2pref.models.policies import load_sft_policy
from clicks2pref.models.registry import apply_training_options, load_causal_lm
from clicks2pref.models.vllm_rollout import VLLMRollout
from clicks2pref.report import write_job_metrics
from clicks2pref.rewards.base import context_key
from clicks2pref.rewards.build import build_reward
from clicks2pref.rewards.diversity import DiversityReward
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)
EVAL_KEYS = ("oracle_ctr", "ci_low", "ci_high", "format_rate", "distinct_2", "mean_pairwise_cosine")


def run(cfg, inputs: dict, loggers=()) -> dict:
    g = cfg.grpo
    # 1. what GRPO reads: the SFT policy, the reward models and the fused weights (`inputs`, run or reused)
    key = artifacts.key(cfg, "grpo", inputs)
    if (result := artifacts.reuse(cfg, "grpo", key)) is not None:
        return publish(cfg, result, [], loggers, fresh=False)

    # 2. the policy (LoRA on the SFT weights, whose disabled adapters are the reference) and the logged prompts
    start = time.time()
    pl.seed_everything(training_seed(cfg), workers=True, verbose=False)
    records = load_impressions(artifacts.logs_source(cfg), cfg.data.on_invalid)
    model, tok, template_name, reference = load_policy(cfg, inputs)
    template = cfg.prompt[template_name]

    # 3. the composite reward, τ calibrated (or taken from fusion) and weights resolved
    ref_model = reference if reference is not None else model
    ref_context = model.disable_adapter if reference is None and hasattr(model, "disable_adapter") else None
    reward, tau = build_reward(cfg, ref_model, tok, template, ref_context, artifacts.rm_models(cfg, inputs),
                               inputs.get("fusion"), records)
    log.info("grpo: reward = %s", reward.describe())

    # 4. the optimiser's module, its items (one prompt per logged conversation, or logged pairs for dpo_clicks)
    # and the reward-hacking monitor
    opt, typed, k = OmegaConf.to_object(cfg.optimizer), OmegaConf.to_object(g), len(cfg.simulator.examination)
    module = build_module(opt, typed, model, tok, reward, k, reference)
    if g.use_vllm:
        module.rollout = VLLMRollout(model, g.vllm_gpu_memory_utilization, g.vllm_max_model_length,
                                     training_seed(cfg))
    # without the simulator the held-out conversations are never prompts: `val` picks checkpoints, `test` evaluates
    trainable = training_records(cfg, records)
    prompts = pair_items(trainable, template, opt, k) if opt.name == "dpo_clicks" else \
        logged_prompts(trainable, template)
    sim = build_simulator(OmegaConf.to_object(cfg.simulator)) if uses_simulator(cfg) else None
    monitor = build_monitor(cfg, sim, template) if sim is not None else \
        offline_monitor(g.monitor, estimator(cfg, inputs), contexts_of(log_split(cfg, records).val), template, cfg.seed)

    # 5. train; a killed run resumes from the work folder's last checkpoint
    train_start = time.time()
    work = artifacts.work_dir(cfg, "grpo", key)
    n_steps = steps(opt, typed)
    trainer = fit(cfg, module, prompts, monitor, work, loggers, n_steps)
    train_seconds = time.time() - train_start
    log.info("grpo: %s, %d steps in %.0fs", NAMES[opt.name], n_steps, train_seconds)

    # 6. GRPO against the policy it started from, on held-out contexts (oracle CTR)
    reference_id = f"sft:{inputs['sft']['key']}" if g.init == "sft" else baseline_id(cfg)
    result = {"key": key, "rewards": cfg.rewards.name, "reward": reward.describe(), "weights": reward.weights,
              "tau": tau, "template": template_name, "init": g.init, "optimizer": opt.name, "steps": n_steps,
              "policy_samples": n_steps * samples_per_step(opt, typed), "budget": policy_samples(opt, typed),
              "compute": module.compute.totals(),
              "optimizer_steps": int(trainer.global_step), "train_seconds": train_seconds,
              "nonfinite_steps": module.nonfinite_total,
              "eval": evaluate(cfg, module, sim, template, f"grpo:{key}", reference_id) if sim is not None else
              evaluate_offline(cfg, module, estimator(cfg, inputs), contexts_of(log_split(cfg, records).test),
                               template),
              "monitor": monitor.detector.summary() if sim is not None else monitor.summary(),
              "selected": monitor.selection(),
              "inputs": {s: inputs[s]["key"] for s in inputs}}

    # 7. the artifact: adapters, sampled completions, a week of RL logs, and the result, written last
    write_artifact(cfg, result, module, sim, template, start)
    shutil.rmtree(work, ignore_errors=True)
    return publish(cfg, result, module.samples, loggers, fresh=True)


def name_trained_base(policy: Path, result: dict) -> None:
    """PEFT names the plain base model in adapter_config.json, but the adapters were trained on the merged SFT
    weights: name those instead, so plain peft fails loudly rather than silently dropping SFT. Load with
    `clicks2pref.models.policies.load_grpo_policy`, or export a standalone model with `python -m clicks2pref.export`."""
    config = policy / "adapter_config.json"
    if config.exists() and result["init"] == "sft":
        meta = json.loads(config.read_text())
        meta["base_model_name_or_path"] = f"clicks2pref-sft-merged:{result['inputs']['sft']}"
        config.write_text(json.dumps(meta, indent=2))


def write_artifact(cfg, result: dict, module, sim, template, start: float) -> None:
    final = artifacts.artifact_path(cfg, "grpo", result["key"])
    with artifacts.atomic_dir(final) as tmp:
        module.model.save_pretrained(tmp / "policy", safe_serialization=True)
        module.tokenizer.save_pretrained(tmp / "policy")
        name_trained_base(tmp / "policy", result)
        write_jsonl(module.samples, tmp / "completions.jsonl")
        logged = rl_logs(cfg, module.model, module.tokenizer, sim, template, tmp)
        result["rl_logs"] = str(final / logged) if logged else None
        result["path"] = str(final)
        result["seconds"] = time.time() - start
        (tmp / "grpo.md").write_text(markdown_report(result))
        (tmp / "metrics.json").write_text(json.dumps(flat_metrics(result), indent=2))
        (tmp / "grpo.json").write_text(json.dumps(result, indent=2))


# --- inputs --------------------------------------------------------------------------------------


def load_policy(cfg, inputs: dict):
    """(model with GRPO's LoRA adapters or fully trainable, tokenizer, template name, frozen reference or None)."""
    g = cfg.grpo
    if g.init == "sft":
        model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
        template = inputs["sft"]["template"]
    else:
        base = OmegaConf.to_object(cfg.policy.model)
        model, tok = load_causal_lm(replace(base, lora=None), cfg.paths.model_cache, seed=cfg.seed)
        template = inputs["sft"]["template"] if "sft" in inputs else artifacts.resolve_template(cfg)
    for p in model.parameters():
        p.requires_grad_(g.lora is None)
    reference = None
    if g.lora is None:  # full fine-tuning: the reference is a frozen copy (LoRA needs none)
        if g.beta != 0.0 or cfg.rewards.get("ppl") is not None or cfg.optimizer.name in NEEDS_REFERENCE:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
    else:
        opts = replace(OmegaConf.to_object(cfg.policy.model), lora=OmegaConf.to_object(g.lora), quantization=None)
        model = apply_training_options(model, opts)
    return model, tok, template, reference


def training_seed(cfg) -> int:
    """What seeds training (`grpo.seed`, else the global seed); probes and evaluations keep the global one."""
    return cfg.seed if cfg.grpo.seed is None else cfg.grpo.seed


def logged_prompts(records: list[dict], template) -> list[dict]:
    """One prompt per distinct logged conversation, in first-seen order."""
    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(context_key(r["context"]), {"messages": build_messages(template, r["context"]),
                                                    "context": r["context"]})
    return list(seen.values())


def build_monitor(cfg, sim, template) -> RewardHackingMonitor:
    """Probe contexts from the validation split, scored by the oracle (evaluation only, never a reward)."""
    m, split, k = cfg.grpo.monitor, cfg.data.split, len(cfg.simulator.examination)
    val = context_splits(sim.world, split)["val"]
    probe_ids = random.Random(cfg.seed).sample(val, min(m.probe_contexts, len(val)))
    probe_rng = random.Random(cfg.seed + 1)
    probe_contexts = [sim.context(t, f, probe_rng) for t, f in probe_ids]

    def oracle(ids, completions):
        return sim.oracle_ctr_many([(t, f, parse_suggestions(c, k).suggestions) for (t, f), c in zip(ids, completions)])

    def sampled(ids, completions):  # an A/B on simulated users: their sampled clicks, not the oracle
        panels = [parse_suggestions(c, k).suggestions for c in completions]  # the same users at every evaluation
        return clicked_share(sim, ids, panels, m.users_per_probe, False, random.Random(cfg.seed + 2))

    return RewardHackingMonitor([build_messages(template, c) for c in probe_contexts], probe_contexts, probe_ids,
                                oracle, m.eval_every, m.patience, m.min_delta, m.stop_on_flag,
                                sampled if m.select == "sampled_clicks" else None)


def fit(cfg, module, prompts: list[dict], monitor, work: Path, loggers, n_steps: int) -> pl.Trainer:
    """Lightning's fit over `n_steps` batches with checkpoints in `work`, resuming from its last one (or
    `ckpt_path`). GRPO stops after its optimiser steps (a skipped step draws one more batch); the other
    optimisers take a variable number of steps per batch and stop after the batches."""
    g = cfg.grpo
    grpo = cfg.optimizer.name == "grpo"
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=g.checkpoint_every_n_steps * g.num_iterations)
    trainer = instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=[checkpoint, monitor],
                          max_steps=n_steps * g.num_iterations if grpo else -1, max_epochs=-1 if grpo else 1,
                          gradient_clip_val=None,
                          accumulate_grad_batches=1, limit_val_batches=0, num_sanity_val_steps=0, _convert_="object")
    if trainer.world_size > 1 and getattr(trainer.strategy, "_start_method", None) == "spawn":
        raise ConfigError("stage=grpo does not run in spawned processes yet: its reward components and the oracle "
                          "monitor do not pickle, and spawned workers would return only the weights. Train GRPO "
                          "in one process; GRPOModule itself matches one process under DDP "
                          "(tests/test_grpo_ddp.py)", "trainer")
    # a manual-optimisation checkpoint holds the weights after the step, which is what resuming wants
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    trainer.fit(module, datamodule=PromptData(prompts, module.cfg.prompts_per_step, n_steps, training_seed(cfg)),
                ckpt_path=resume_checkpoint(work, cfg.ckpt_path, "grpo"), weights_only=True)
    return trainer


# --- outputs -------------------------------------------------------------------------------------


def estimator(cfg, inputs: dict):
    """The click model the reward models learned, read as a CTR estimator (`eval.offline.estimator`)."""
    estimators, primary = build_estimators(artifacts.rm_models(cfg, inputs), cfg.eval.offline.estimator,
                                           cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    return estimators[primary]


def evaluate_offline(cfg, module, est, conversations: list, template) -> dict:
    """No simulator: GRPO vs. the policy it started from on held-out logged conversations (`test`), by the click
    model's estimated CTR (model-based), with the fields of `evaluate` (`estimated_ctr` for `oracle_ctr`)."""
    ev = cfg.grpo.eval
    conversations = conversations[:ev.max_contexts] if ev.max_contexts else conversations
    if module.reference_model is not None:
        reference = module.reference_model
    else:  # the adapters disabled = the weights GRPO started from
        merged = copy.deepcopy(module.model)
        reference = merged.unload() if hasattr(merged, "unload") else merged
    messages = [build_messages(template, c) for c in conversations]
    outputs = {name: generate(model, module.tokenizer, messages, cfg.policy.generation, seed=cfg.seed,
                              desc=f"offline: {name}") if messages else []
               for name, model in (("sft", reference), ("grpo", module.model))}
    out = compare_policies(est, conversations, outputs, "sft", ev.bootstrap_samples, ev.ci_level, cfg.seed,
                           ev.gsb_margin, DiversityReward(cfg.rewards.embedder))
    return {**out, "split": "logged (test)", "ci": f"{ev.ci_level:.0%}",
            "examples": [{"context": c, "sft": outputs["sft"][i], "grpo": outputs["grpo"][i]}
                         for i, c in enumerate(conversations[:4])]}


def evaluate(cfg, module, sim, template, policy_id: str, reference_id: str) -> dict:
    """GRPO vs. its reference (the SFT policy) on held-out contexts: oracle CTR + CI, paired lift, GSB,
    format rate and diversity. The reference's evaluation is usually the one the sft stage already made."""
    ev = cfg.grpo.eval
    contexts = heldout_contexts(cfg, sim, ev)
    diversity = DiversityReward(cfg.rewards.embedder)
    start = time.time()
    grpo = score_policy(cfg, ev, sim, contexts, policy_id, lambda: (module.model, module.tokenizer), template,
                        diversity)

    def reference():
        if module.reference_model is not None:
            return module.reference_model, module.tokenizer
        merged = copy.deepcopy(module.model)  # the adapters disabled = the weights GRPO started from
        return (merged.unload() if hasattr(merged, "unload") else merged), module.tokenizer

    ref = score_policy(cfg, ev, sim, contexts, reference_id, reference, template, diversity)
    lift = paired(grpo, ref, ev, ev.gsb_margin, cfg.seed)
    return {"split": ev.split, "contexts": len(contexts), "ci": f"{ev.ci_level:.0%}",
            "grpo": {x: grpo[x] for x in EVAL_KEYS}, "sft": {x: ref[x] for x in EVAL_KEYS},
            "lift": {k: lift[k] for k in ("ctr_diff", "ci_low", "ci_high", "relative")}, "gsb": lift["gsb"],
            "examples": [{"question": contexts[i], "sft": ref["outputs"][i], "grpo": grpo["outputs"][i]}
                         for i in range(min(4, len(contexts)))],
            "seconds": time.time() - start}


def rl_logs(cfg, model, tok, sim, template, folder: Path) -> Optional[str]:
    """One week of impressions from the GRPO policy through the simulator (the OOD "Week 4-RFT" split); none
    without the simulator."""
    rc = cfg.grpo.rl_logs
    if not rc.enabled or sim is None:
        return None
    split = cfg.data.split
    train = context_splits(sim.world, split)["train"]
    rng = random.Random(cfg.seed + 4)
    contexts = sample_contexts(train, rc.sessions or cfg.collect.sessions_per_week, rng)
    records, empty = log_week(model, tok, sim, template, rc.policy_name, rc.week, contexts, cfg, rng)
    if not records:  # an empty file would fail every reader of OOD logs; the OOD split is simply absent
        log.warning("grpo: no RL logs: all %d panels of the GRPO policy were empty", empty)
        return None
    path = folder / f"rl_week{rc.week}.{cfg.data.format}"
    write_impressions(records, path)
    log.info("grpo: logged %d impressions from the GRPO policy (%d empty panels) -> %s", len(records), empty, path)
    return path.name


def publish(cfg, result: dict, samples: list, loggers, fresh: bool) -> dict:
    """grpo.json, grpo.md, metrics.json and (fresh) training.png in the run folder; metrics, completions and
    the console."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grpo.json").write_text(json.dumps(result, indent=2))
    (out_dir / "grpo.md").write_text(markdown_report(result))
    write_job_metrics(cfg, "grpo", flat_metrics(result))
    plot = None
    if fresh:
        write_jsonl(samples, out_dir / "completions.jsonl")
        log_metrics(loggers, flat_metrics(result))
        if samples:
            log_table([lg for lg in loggers if hasattr(lg, "log_table")], "grpo/completions", samples)
        try:  # reward, KL, entropy and the monitor's proxy vs. oracle CTR over the steps
            plot = write_training_plot(out_dir)
        except Exception as e:  # a figure never fails the stage: one warning line instead
            log.warning("grpo: training.png not written (%s: %s)", type(e).__name__, e)
    if fresh or cfg.stage.name == "grpo":  # a reused upstream grpo stays quiet
        print("\n" + markdown_report(result))
    if fresh:
        print(f"GRPO policy -> {Path(result['path']) / 'policy'} in {result['seconds']:.0f}s")
    if plot is not None:
        print(f"plots:   {plot}")
    return result


# --- reports -------------------------------------------------------------------------------------


def markdown_report(result: dict) -> str:
    ev = result["eval"]
    ctr = "oracle_ctr" if "oracle_ctr" in ev["sft"] else "estimated_ctr"  # no simulator: the click model's estimate
    lines = [f"{NAMES[result.get('optimizer', 'grpo')]} ({result['rewards']}: {result['reward']}) — {result['steps']} "
             f"steps in {result['train_seconds']:.0f}s; {ev['contexts']} held-out {ev['split']} contexts, "
             f"{ev['ci']} CIs",
             *compute_line(result), "",
             f"| policy | {ctr.replace('_', ' ').replace('ctr', 'CTR')} | CI low | CI high | format rate | distinct-2 "
             "| mean cosine |",
             "|---|---|---|---|---|---|---|"]
    for name in ("sft", "grpo"):
        m = ev[name]
        lines.append(f"| {name} | {m[ctr]:.4f} | {m['ci_low']:.4f} | {m['ci_high']:.4f} | "
                     f"{m['format_rate']:.3f} | {m['distinct_2']:.3f} | {m['mean_pairwise_cosine']:.3f} |")
    lift, g, monitor = ev["lift"], ev["gsb"], result["monitor"]
    flag = f"RAISED at steps {monitor['flagged_at']}" if monitor["flagged"] else "no"
    lines += ["", f"paired CTR difference (GRPO − SFT): {lift['ctr_diff']:+.4f} [{lift['ci_low']:+.4f}, "
                  f"{lift['ci_high']:+.4f}]; GSB vs. SFT {g['gsb']:+.1f} "
                  f"(G {g['good']} / S {g['same']} / B {g['bad']})",
              f"reward hacking flag: {flag}"]
    if result.get("rl_logs"):
        lines.append(f"RL logs (OOD split): {result['rl_logs']}")
    return "\n".join(lines) + "\n"


def compute_line(result: dict) -> list[str]:
    c = result.get("compute")
    if c is None:
        return []
    return [f"compute: {result['policy_samples']} policy samples, {c['generated_tokens']} generated tokens, "
            f"{c['forward_tokens']} forward ({c['backward_tokens']} backward) tokens, {c['reward_tokens']} "
            f"reward-model tokens, {c['seconds']:.0f}s"]


def flat_metrics(result: dict) -> dict:
    ev = result["eval"]
    ctr = "oracle_ctr" if "oracle_ctr" in ev["sft"] else "estimated_ctr"  # no simulator: the click model's estimate
    out = {f"grpo/eval/{p}_{m}": ev[p][m] for p in ("grpo", "sft") for m in (ctr, "ci_low", "ci_high",
                                                                            "format_rate", "distinct_2")}
    out.update({"grpo/eval/ctr_diff": ev["lift"]["ctr_diff"], "grpo/eval/gsb": ev["gsb"]["gsb"],
                "grpo/eval/hacking_flag": float(result["monitor"]["flagged"])})
    out.update({f"grpo/compute/total_{k}": float(v) for k, v in result.get("compute", {}).items()})
    return out
