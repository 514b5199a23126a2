"""Stage 4 (paper stage 4): GRPO on the composite reward, evaluated against the SFT policy (SPEC 5.5).

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
import hashlib
import json
import logging
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from clicks2pref.models.registry import LoraConfig

log = logging.getLogger(__name__)
INITS = ("sft", "base")


@dataclass
class GRPOConfig:
    """The algorithm's knobs, read by clicks2pref.lit.grpo_module.GRPOModule (TRL names; see its docstring)."""

    group_size: int = 4  # TRL num_generations: completions per prompt
    prompts_per_step: int = 4  # prompts per batch (TRL generation_batch_size = this × group_size)
    max_completion_length: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    beta: float = 0.04  # KL coefficient
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None  # null = epsilon
    scale_rewards: str = "group"  # group | batch | none
    loss_type: str = "token"  # token | sequence | dr_grpo (TRL aliases accepted)
    num_iterations: int = 1  # optimiser steps per batch of samples (μ in the GRPO paper)
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    use_bias_correction_kl: bool = True
    mask_truncated_completions: bool = False  # completions without an end token get no loss
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"  # constant | linear (to 0 at the last step), after warmup_steps
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 8  # sequences per forward/backward
    lora: Optional[LoraConfig] = field(default_factory=lambda: LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0))
    max_nonfinite_steps: int = 5
    log_completions_every: int = 5  # steps between sample-completion snapshots (0 = off)


@dataclass
class MonitorConfig:
    """The reward-hacking monitor's settings (clicks2pref.eval.monitor.RewardHackingMonitor)."""

    probe_contexts: int = 16  # fixed held-out (validation-split) contexts the monitor generates for
    eval_every: int = 4  # optimisation steps between evaluations (0 = off)
    patience: int = 2  # diverging evaluations in a row before the flag
    min_delta: float = 0.0  # change that counts as a rise / fall
    stop_on_flag: bool = False  # stop training when the flag is raised


@dataclass
class GRPOEvalConfig:
    split: str = "test"  # test | val contexts of the simulator split (never in the logs)
    max_contexts: Optional[int] = None  # null = every context of the split
    gsb_margin: float = 0.02  # |CTR difference| within which a context counts as Same (SPEC eval.gsb.margin)
    bootstrap_samples: int = 1000
    ci_level: float = 0.95


@dataclass
class RLLogsConfig:
    enabled: bool = True  # log a week of impressions from the GRPO policy (the Week 4-RFT OOD split)
    week: int = 4  # the week number written in the records
    # panels generated (each shown to collect.users_per_panel users); null = collect.sessions_per_week
    sessions: Optional[int] = None
    policy_name: str = "grpo"  # the records' `policy` field


@dataclass
class GRPOStageConfig(GRPOConfig):
    init: str = "sft"  # sft = start from stage=sft's policy | base = policy.model as it is
    steps: int = 12  # batches of prompts (optimiser steps = steps × num_iterations)
    checkpoint_every_n_steps: int = 4  # Lightning checkpoint (adapters + optimiser) for resuming
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    rl_logs: RLLogsConfig = field(default_factory=RLLogsConfig)


# --- inputs --------------------------------------------------------------------------------------


def check_config(cfg) -> None:
    """What the schema cannot say, checked before any stage runs or model loads."""
    from clicks2pref.errors import ConfigError
    from clicks2pref.objectives.grpo import LOSS_TYPES, SCALE_REWARDS
    from clicks2pref.rewards.composite import WEIGHT_SOURCES, needed_reward_models

    g = cfg.grpo
    checks = [("grpo.init", g.init, INITS), ("grpo.loss_type", g.loss_type, tuple(LOSS_TYPES)),
              ("grpo.scale_rewards", g.scale_rewards, tuple(k for k in SCALE_REWARDS if isinstance(k, str))),
              ("grpo.importance_sampling_level", g.importance_sampling_level, ("token", "sequence")),
              ("grpo.lr_scheduler", g.lr_scheduler, ("constant", "linear")),
              ("grpo.eval.split", g.eval.split, ("test", "val")),
              ("rewards.weights", cfg.rewards.weights, WEIGHT_SOURCES)]
    for key, value, accepted in checks:
        if value not in accepted:
            raise ConfigError(f"{key}: unknown {value!r}; accepted: {', '.join(accepted)}")
    if g.group_size < 2:
        raise ConfigError("grpo.group_size must be at least 2 (advantages are relative to the group)")
    missing = [k for k in needed_reward_models(cfg.rewards) if k not in cfg.reward_model.kinds]
    if missing:
        raise ConfigError(f"rewards={cfg.rewards.name} needs reward models {missing} that reward_model.kinds "
                          f"{list(cfg.reward_model.kinds)} does not train; add them to reward_model.kinds")


def upstream(cfg, loggers, need_fusion: bool = True) -> dict:
    """Results of the stages GRPO reads (each runs now if its artifact is missing, else is reused)."""
    from clicks2pref.rewards.composite import needed_reward_models
    from clicks2pref.stages import sft as sft_stage

    check_config(cfg)
    out: dict = {}
    if cfg.grpo.init == "sft" or need_fusion:
        out["sft"] = sft_stage.run(cfg, loggers)
    if needed_reward_models(cfg.rewards):
        from clicks2pref.stages import rm as rm_stage

        out["rm"] = rm_stage.run(cfg, loggers)
    if need_fusion and cfg.rewards.weights == "fusion":
        from clicks2pref.stages import fusion as fusion_stage

        out["fusion"] = fusion_stage.run(cfg, loggers)
    return out


def sft_dir(cfg, inputs: dict) -> Path:
    """The SFT artifact folder of this config (not the path recorded inside it: artifacts may be copied)."""
    from clicks2pref.stages.artifacts import artifact_path

    return artifact_path(cfg, "sft", inputs["sft"]["key"])


def rm_models(cfg, inputs: dict) -> dict:
    """kind -> trained reward-model folder of this config's stage=rm artifact."""
    from clicks2pref.stages.artifacts import artifact_path

    if "rm" not in inputs:
        return {}
    return {kind: str(artifact_path(cfg, "rm", inputs["rm"]["key"]) / kind) for kind in inputs["rm"]["models"]}


def grpo_key(cfg, inputs: dict) -> str:
    from clicks2pref.rewards.base import SCORING_VERSION
    from clicks2pref.stages.artifacts import stage_key
    from clicks2pref.stages.sft import logs_fingerprint

    parts = [stage_key(cfg, "grpo"), logs_fingerprint(cfg), f"scoring-v{SCORING_VERSION}"]
    parts += [inputs[s]["key"] for s in ("sft", "rm", "fusion") if s in inputs]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def logged_prompts(records: list[dict], template) -> list[dict]:
    """One prompt per distinct logged conversation, in first-seen order."""
    from clicks2pref.data.prompts import build_messages
    from clicks2pref.rewards.base import context_key

    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(context_key(r["context"]), {"messages": build_messages(template, r["context"]),
                                                    "context": r["context"]})
    return list(seen.values())


def logged_panels(records: list[dict], n: int, seed: int) -> tuple[list[list[dict]], list[str]]:
    """Up to n distinct logged panels (context, formatted text), a seeded sample: τ's calibration set."""
    from clicks2pref.data.parsing import format_suggestions
    from clicks2pref.rewards.base import context_key

    panels: dict = {}
    for r in records:
        panels.setdefault((context_key(r["context"]), tuple(r["suggestions"])), r)
    keys = sorted(panels)
    random.Random(seed).shuffle(keys)
    chosen = [panels[k] for k in keys[:n]]
    return [r["context"] for r in chosen], [format_suggestions(r["suggestions"]) for r in chosen]


def load_policy(cfg, inputs: dict):
    """(model with GRPO's LoRA adapters or fully trainable, tokenizer, template name, frozen reference or None)."""
    from clicks2pref.errors import ConfigError
    from clicks2pref.models.registry import apply_training_options, load_causal_lm
    from clicks2pref.stages.sft import load_sft_policy, resolve_template

    g = cfg.grpo
    if g.init not in INITS:
        raise ConfigError(f"grpo.init: unknown {g.init!r}; accepted: {', '.join(INITS)}")
    if g.init == "sft":
        model, tok = load_sft_policy(sft_dir(cfg, inputs), cfg, merge=True)
        template = inputs["sft"]["template"]
    else:
        from omegaconf import OmegaConf

        base = OmegaConf.to_object(cfg.policy.model)
        model, tok = load_causal_lm(replace(base, lora=None), cfg.paths.model_cache, seed=cfg.seed)
        template = inputs["sft"]["template"] if "sft" in inputs else resolve_template(cfg)
    for p in model.parameters():
        p.requires_grad_(g.lora is None)
    reference = None
    if g.lora is None:  # full fine-tuning: the reference is a frozen copy (LoRA needs none)
        if g.beta != 0.0 or cfg.rewards.get("ppl") is not None:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
    else:
        from omegaconf import OmegaConf

        lora = OmegaConf.to_object(g.lora)
        opts = replace(OmegaConf.to_object(cfg.policy.model), lora=lora, quantization=None)
        model = apply_training_options(model, opts)
    return model, tok, template, reference


def load_grpo_policy(path, cfg):
    """(model, tokenizer) of a GRPO artifact folder (`artifacts/grpo/<key>`), adapters merged.

    The adapters in `policy/` sit on the weights GRPO started from: the merged SFT policy recorded in
    `grpo.json` (resolved under this config's artifact root) or the base policy model.
    """
    from clicks2pref.errors import ModelNotFoundError
    from clicks2pref.models.registry import _from_pretrained, load_causal_lm, load_tokenizer
    from clicks2pref.stages.artifacts import artifact_path
    from clicks2pref.stages.sft import _dtype, load_sft_policy

    path = Path(path)
    meta_file = path / "grpo.json"
    if not meta_file.exists():
        raise ModelNotFoundError(f"{path} is not a GRPO artifact (no grpo.json); pass artifacts/grpo/<key> "
                                 "from `python -m clicks2pref stage=grpo`")
    meta = json.loads(meta_file.read_text())
    policy = path / "policy"
    if not (policy / "adapter_config.json").exists():  # full fine-tuning saved the whole model
        from transformers import AutoModelForCausalLM

        from omegaconf import OmegaConf

        base = OmegaConf.to_object(cfg.policy.model)
        tok = load_tokenizer(replace(base, name=str(policy), lora=None), cfg.paths.model_cache)
        return _from_pretrained(AutoModelForCausalLM, str(policy), dtype=_dtype(base.dtype)), tok
    if meta["init"] == "sft":
        sft = artifact_path(cfg, "sft", meta["inputs"]["sft"])
        if not (sft / "sft.json").exists():
            raise ModelNotFoundError(f"{path}: its SFT policy {sft} is missing (GRPO adapters need the weights "
                                     "they were trained on); run stage=sft with the same config or copy it there")
        model, tok = load_sft_policy(sft, cfg, merge=True)
    else:
        from omegaconf import OmegaConf

        model, tok = load_causal_lm(replace(OmegaConf.to_object(cfg.policy.model), lora=None), cfg.paths.model_cache,
                                    seed=cfg.seed)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(policy)).merge_and_unload()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(cfg, module, sim, template, policy_id: str, reference_id: str) -> dict:
    """GRPO vs. its reference (the SFT policy) on held-out contexts: oracle CTR + CI, paired lift, GSB,
    format rate and diversity. Both evaluations go through the evaluation cache (the reference's is
    usually the one the sft stage already made)."""
    from clicks2pref.data.parsing import parse_suggestions
    from clicks2pref.data.simulator import split_contexts
    from clicks2pref.eval.ctr import bootstrap_mean
    from clicks2pref.eval.gsb import gsb
    from clicks2pref.eval.policy import cached_evaluation
    from clicks2pref.rewards.diversity import DiversityReward, distinct_n

    ev, split = cfg.grpo.eval, cfg.data.split
    contexts = split_contexts(sim.world, split.val_fraction, split.test_fraction, split.seed)[ev.split]
    contexts = contexts[:ev.max_contexts] if ev.max_contexts else contexts
    diversity = DiversityReward(cfg.rewards.embedder)
    k = len(cfg.simulator.examination)

    def one(policy_id: str, load) -> dict:
        m = cached_evaluation(cfg, policy_id, load, template, sim, ev.split, contexts, ev.bootstrap_samples,
                              ev.ci_level)
        panels = [parse_suggestions(o, k).suggestions for o in m["outputs"]]
        m["distinct_2"] = distinct_n(panels, 2)
        m["mean_pairwise_cosine"] = diversity.mean_pairwise_cosine(panels)
        return m

    start = time.time()
    grpo = one(policy_id, lambda: (module.model, module.tokenizer))

    def reference():
        if module.reference_model is not None:
            return module.reference_model, module.tokenizer
        merged = copy.deepcopy(module.model)  # the adapters disabled = the weights GRPO started from
        return (merged.unload() if hasattr(merged, "unload") else merged), module.tokenizer

    reference = one(reference_id, reference)
    diff = [a - b for a, b in zip(grpo["per_context_ctr"], reference["per_context_ctr"])]
    lift = bootstrap_mean(diff, ev.bootstrap_samples, ev.ci_level, cfg.seed)
    keys = ("oracle_ctr", "ci_low", "ci_high", "format_rate", "distinct_2", "mean_pairwise_cosine")
    return {"split": ev.split, "contexts": len(contexts), "ci": f"{ev.ci_level:.0%}",
            "grpo": {x: grpo[x] for x in keys}, "sft": {x: reference[x] for x in keys},
            "lift": {"ctr_diff": lift.mean, "ci_low": lift.low, "ci_high": lift.high,
                     "relative": lift.mean / reference["oracle_ctr"] if reference["oracle_ctr"] else None},
            "gsb": gsb(grpo["per_context_ctr"], reference["per_context_ctr"], ev.gsb_margin).as_dict(),
            "examples": [{"question": contexts[i], "sft": reference["outputs"][i], "grpo": grpo["outputs"][i]}
                         for i in range(min(4, len(contexts)))],
            "seconds": time.time() - start}


def rl_logs(cfg, model, tok, sim, template, folder: Path) -> Optional[str]:
    """One week of impressions from the GRPO policy through the simulator (the OOD "Week 4-RFT" split)."""
    from clicks2pref.data.io import write_impressions
    from clicks2pref.data.simulator import split_contexts
    from clicks2pref.stages.collect import log_week, sample_contexts

    rc = cfg.grpo.rl_logs
    if not rc.enabled:
        return None
    split = cfg.data.split
    train = split_contexts(sim.world, split.val_fraction, split.test_fraction, split.seed)["train"]
    rng = random.Random(cfg.seed + 4)
    contexts = sample_contexts(train, rc.sessions or cfg.collect.sessions_per_week, rng)
    records, empty = log_week(model, tok, sim, template, rc.policy_name, rc.week, contexts, cfg, rng)
    path = folder / f"rl_week{rc.week}.{cfg.data.format}"
    write_impressions(records, path)
    log.info("grpo: logged %d impressions from the GRPO policy (%d empty panels) -> %s", len(records), empty, path)
    return path.name


# --- reports -------------------------------------------------------------------------------------


def summary_row(result: dict) -> dict:
    """One Table-4 row: the preset and GRPO vs. SFT on held-out contexts."""
    ev = result["eval"]
    return {"rewards": result["rewards"], "oracle_ctr": ev["grpo"]["oracle_ctr"], "ci_low": ev["grpo"]["ci_low"],
            "ci_high": ev["grpo"]["ci_high"], "sft_ctr": ev["sft"]["oracle_ctr"], "ctr_diff": ev["lift"]["ctr_diff"],
            "gsb": ev["gsb"]["gsb"], "format_rate": ev["grpo"]["format_rate"], "distinct_2": ev["grpo"]["distinct_2"],
            "mean_cosine": ev["grpo"]["mean_pairwise_cosine"], "hacking_flag": result["monitor"]["flagged"]}


def markdown_report(result: dict) -> str:
    ev = result["eval"]
    lines = [f"GRPO ({result['rewards']}: {result['reward']}) — {result['steps']} steps in "
             f"{result['train_seconds']:.0f}s; {ev['contexts']} held-out {ev['split']} contexts, {ev['ci']} CIs", "",
             "| policy | oracle CTR | CI low | CI high | format rate | distinct-2 | mean cosine |",
             "|---|---|---|---|---|---|---|"]
    for name in ("sft", "grpo"):
        m = ev[name]
        lines.append(f"| {name} | {m['oracle_ctr']:.4f} | {m['ci_low']:.4f} | {m['ci_high']:.4f} | "
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


def flat_metrics(result: dict) -> dict:
    ev = result["eval"]
    out = {f"grpo/eval/{p}_{m}": ev[p][m] for p in ("grpo", "sft") for m in ("oracle_ctr", "ci_low", "ci_high",
                                                                            "format_rate", "distinct_2")}
    out.update({"grpo/eval/ctr_diff": ev["lift"]["ctr_diff"], "grpo/eval/gsb": ev["gsb"]["gsb"],
                "grpo/eval/hacking_flag": float(result["monitor"]["flagged"])})
    return out


def _write_reports(result: dict, folder: Path) -> None:
    (folder / "grpo.json").write_text(json.dumps(result, indent=2))
    (folder / "grpo.md").write_text(markdown_report(result))
    (folder / "metrics.json").write_text(json.dumps(flat_metrics(result), indent=2))


# --- the stage -----------------------------------------------------------------------------------


def build_reward(cfg, module_or_model, tok, template, reference_context, rm_models: Optional[dict],
                 fused: Optional[dict], records: list[dict]):
    """The composite reward with τ calibrated (or taken from fusion) and weights resolved."""
    from clicks2pref.rewards.base import RewardResources
    from clicks2pref.rewards.composite import CompositeReward, build_components, resolve_weights
    from clicks2pref.rewards.ppl import ReferenceScorer

    scorer = ReferenceScorer(module_or_model, tok, template, cfg.grpo.temperature, cfg.grpo.micro_batch_size,
                             reference_context)
    resources = RewardResources(rm_models, scorer, cfg.paths.model_cache)
    components = build_components(cfg.rewards, resources)
    tau = None
    if "ppl" in components:
        ppl = components["ppl"]
        if ppl.tau is None and fused is not None and fused.get("tau") is not None:
            ppl.tau = fused["tau"]
        elif ppl.tau is None:
            contexts, panels = logged_panels(records, ppl.calibration_panels, cfg.seed)
            ppl.calibrate(contexts, panels)
        tau = ppl.tau
        log.info("grpo: ppl τ = %.4f (quantile %.2f of logged panels' reference log-PPL)", tau, ppl.quantile)
    weights = resolve_weights(cfg.rewards, list(components), fused["weights"] if fused else None)
    return CompositeReward(components, weights), tau


def run(cfg, loggers=()) -> dict:
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import ModelCheckpoint

    from clicks2pref.data.io import load_impressions, write_jsonl
    from clicks2pref.data.simulator import build_simulator, split_contexts
    from clicks2pref.data.sources import click_log_source
    from clicks2pref.eval.monitor import RewardHackingMonitor
    from clicks2pref.lit.grpo_module import GRPOModule, prompt_loader
    from clicks2pref.loggers import log_metrics, log_table
    from clicks2pref.stages.artifacts import artifact_path, atomic_dir

    g = cfg.grpo
    inputs = upstream(cfg, loggers)
    key = grpo_key(cfg, inputs)
    final = artifact_path(cfg, "grpo", key)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.cache and (final / "grpo.json").exists():
        log.info("grpo: reusing %s", final)
        result = json.loads((final / "grpo.json").read_text())
        _write_reports(result, out_dir)
        print("\n" + markdown_report(result))
        return result

    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    records = load_impressions(click_log_source(cfg), cfg.data.on_invalid)
    model, tok, template_name, reference = load_policy(cfg, inputs)
    template = cfg.prompt[template_name]
    ref_model = reference if reference is not None else model
    ref_context = model.disable_adapter if reference is None and hasattr(model, "disable_adapter") else None
    fused = inputs.get("fusion")
    reward, tau = build_reward(cfg, ref_model, tok, template, ref_context, rm_models(cfg, inputs), fused, records)
    log.info("grpo: reward = %s", reward.describe())

    k = len(cfg.simulator.examination)
    grpo_cfg = OmegaConf.to_object(g)
    module = GRPOModule(model, tok, reward, grpo_cfg, k=k, reference_model=reference,
                        total_steps=g.steps * g.num_iterations)
    prompts = logged_prompts(records, template)
    loader = prompt_loader(prompts, g.prompts_per_step, g.steps, cfg.seed)

    # the monitor: probe contexts from the validation split, scored by the oracle (evaluation only)
    sim = build_simulator(OmegaConf.to_object(cfg.simulator))
    split = cfg.data.split
    val = split_contexts(sim.world, split.val_fraction, split.test_fraction, split.seed)["val"]
    probe_ids = random.Random(cfg.seed).sample(val, min(g.monitor.probe_contexts, len(val)))
    probe_rng = random.Random(cfg.seed + 1)
    probe_contexts = [sim.context(t, f, probe_rng) for t, f in probe_ids]
    from clicks2pref.data.parsing import parse_suggestions
    from clicks2pref.data.prompts import build_messages

    def oracle(ids, completions):
        return sim.oracle_ctr_many([(t, f, parse_suggestions(c, k).suggestions) for (t, f), c in zip(ids, completions)])

    monitor = RewardHackingMonitor([build_messages(template, c) for c in probe_contexts], probe_contexts, probe_ids,
                                   oracle, g.monitor.eval_every, g.monitor.patience, g.monitor.min_delta,
                                   g.monitor.stop_on_flag)

    work = final.parent / f".work-{key}"
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=g.checkpoint_every_n_steps * g.num_iterations)
    trainer = instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=[checkpoint, monitor],
                          max_steps=g.steps * g.num_iterations, max_epochs=-1, gradient_clip_val=None,
                          accumulate_grad_batches=1, limit_val_batches=0, num_sanity_val_steps=0, _convert_="object")
    # a manual-optimisation checkpoint holds the weights after the step, which is what resuming wants
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    last = work / "ckpt" / "last.ckpt"
    resume = cfg.ckpt_path or (str(last) if last.exists() else None)
    if resume:
        log.info("grpo: resuming from %s", resume)
    train_start = time.time()
    trainer.fit(module, loader, ckpt_path=resume, weights_only=False)
    train_seconds = time.time() - train_start
    log.info("grpo: %d steps in %.0fs", g.steps, train_seconds)

    from clicks2pref.eval.policy import baseline_id

    reference_id = f"sft:{inputs['sft']['key']}" if g.init == "sft" else baseline_id(cfg)
    evaluation = evaluate(cfg, module, sim, template, f"grpo:{key}", reference_id)
    result = {"key": key, "rewards": cfg.rewards.name, "reward": reward.describe(), "weights": reward.weights,
              "tau": tau, "template": template_name, "init": g.init, "steps": g.steps,
              "optimizer_steps": int(trainer.global_step), "train_seconds": train_seconds,
              "nonfinite_steps": module.nonfinite_total, "eval": evaluation, "monitor": monitor.detector.summary(),
              "inputs": {s: inputs[s]["key"] for s in inputs}}
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp / "policy", safe_serialization=True)
        tok.save_pretrained(tmp / "policy")
        write_jsonl(module.samples, tmp / "completions.jsonl")
        result["rl_logs"] = rl_logs(cfg, model, tok, sim, template, tmp)
        if result["rl_logs"]:
            result["rl_logs"] = str(final / result["rl_logs"])
        result["path"] = str(final)
        result["seconds"] = time.time() - start
        _write_reports(result, tmp)
    shutil.rmtree(work, ignore_errors=True)
    _write_reports(result, out_dir)
    write_jsonl(module.samples, out_dir / "completions.jsonl")
    log_metrics(loggers, flat_metrics(result))
    table_loggers = [lg for lg in loggers if hasattr(lg, "log_table")]
    if module.samples:
        log_table(table_loggers, "grpo/completions", module.samples)
    print("\n" + markdown_report(result))
    print(f"GRPO policy -> {final / 'policy'} in {result['seconds']:.0f}s")
    return result


def sweep_table(folder) -> str:
    """Markdown Table 4 from a multirun folder: one row per job's grpo.json.

    Command line: `python -m clicks2pref.stages.grpo DIR`."""
    rows = [summary_row(json.loads(p.read_text())) for p in sorted(Path(folder).glob("*/grpo.json"))]
    cols = ["rewards", "oracle_ctr", "ci_low", "ci_high", "sft_ctr", "ctr_diff", "gsb", "format_rate", "distinct_2",
            "mean_cosine", "hacking_flag"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(sweep_table(sys.argv[1]))
