"""Stage 2 (SFT): click logs -> clean three-suggestion targets -> a fine-tuned policy (SPEC 5.2).

(a) clicked suggestions grouped by context (`clicks2pref.data.sft_data`); (b) with a teacher
(`teacher=` group, `clicks2pref.stages.teacher`) a model fine-tuned on the single clicked suggestions
samples candidates per context, else the clicks are the candidates; (c) diversity-aware assembly
(`clicks2pref.data.assembly`); (d) the policy is fine-tuned (full, LoRA or QLoRA) with
`clicks2pref.lit.sft_module.SFTModule` on the best prompt template of `collect`, then evaluated
against the prompted baseline on held-out test contexts by the oracle.

Writes `artifacts/sft/<key>/`: `policy/` (adapter or full model, and the tokenizer; load it with
`load_sft_policy`), `merged/` (with `sft.save_merged`), `sft_data.jsonl`, `single.jsonl`,
`candidates.jsonl`, `sft.json` and `sft.md`; the reports are copied to the run folder. A killed run
resumes from the last Lightning checkpoint in `artifacts/sft/.work-<key>/`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional

from clicks2pref.data.assembly import AssemblyConfig
from clicks2pref.data.sft_data import SFTDataConfig
from clicks2pref.models.registry import LoraConfig

log = logging.getLogger(__name__)
METHODS = ("full", "lora", "qlora")


@dataclass
class SFTTrainConfig:
    max_steps: int = 24  # optimizer steps
    batch_size: int = 4  # global batch (split evenly over processes)
    max_length: int = 256  # longer examples (prompt + target) are dropped and counted
    val_every_n_steps: int = 24  # validation loss and format rate every N steps (and at the end)
    validate_before: bool = True  # also measure validation loss before the first step
    ckpt_every_n_steps: int = 6  # Lightning checkpoint (trainable weights + optimizer) for resuming
    format_probe: int = 8  # held-out prompts generated at each validation for the format rate; 0 = off
    max_nonfinite_steps: int = 10  # consecutive NaN/inf losses tolerated (each skips its step)
    optimizer: Dict[str, Any] = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "_partial_": True,
                                                               "lr": 1e-3})
    scheduler: Optional[Dict[str, Any]] = None  # a `_partial_` LR scheduler taking the optimizer


@dataclass
class SFTEvalConfig:
    enabled: bool = True  # oracle CTR and format rate of the SFT policy on held-out contexts
    baseline: bool = True  # the same for the prompted base policy, with a paired lift
    split: str = "test"  # test | val contexts of the simulator split
    max_contexts: Optional[int] = None  # null = every context of the split
    bootstrap_samples: int = 1000
    ci_level: float = 0.95


@dataclass
class SFTConfig:
    method: str = "lora"  # full | lora | qlora (LoRA on a 4-bit base; bitsandbytes, GPUs)
    lora: LoraConfig = field(default_factory=LoraConfig)
    template: Optional[str] = None  # prompt template to train on; null = collect's best_template
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    save_merged: bool = False  # also save LoRA merged into the base (a plain transformers model)
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)


# --- inputs --------------------------------------------------------------------------------------


def training_model_config(base, method: str, lora):
    """The ModelConfig actually trained: `base` with LoRA (and 4-bit for qlora) per `method`."""
    from omegaconf import OmegaConf

    from clicks2pref.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(f"method '{method}' is not one of {', '.join(METHODS)}")
    base = OmegaConf.to_object(base) if OmegaConf.is_config(base) else base
    lora = OmegaConf.to_object(lora) if OmegaConf.is_config(lora) else lora
    if method == "full":
        return replace(base, lora=None)
    return replace(base, lora=lora, quantization="4bit" if method == "qlora" else base.quantization)


def logs_fingerprint(cfg) -> str:
    """What the stage reads: collect's key when logs come from collect, else a hash of the files' bytes."""
    from clicks2pref.data.io import expand_sources
    from clicks2pref.stages.artifacts import stage_key

    if not cfg.data.logs:
        return "collect:" + stage_key(cfg, "collect")
    digest = hashlib.sha256()
    for path in expand_sources(cfg.data.logs):
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return "logs:" + digest.hexdigest()[:16]


def keyed(cfg, stage: str, extra: str = "") -> str:
    """stage_key of `stage` with the click logs it reads (and `extra`) folded in."""
    from clicks2pref.stages.artifacts import stage_key

    return hashlib.sha256(f"{stage_key(cfg, stage)}|{logs_fingerprint(cfg)}|{extra}".encode()).hexdigest()[:12]


def resolve_template(cfg) -> str:
    """`sft.template`, else `best_template` of the templates.json next to the logs, else the only prompt."""
    from clicks2pref.data.io import expand_sources
    from clicks2pref.data.sources import click_log_source
    from clicks2pref.errors import ConfigError

    name, where = cfg.sft.template, "sft.template"
    if not name:
        found = Path(expand_sources(click_log_source(cfg))[0]).parent / "templates.json"
        if found.exists():
            name, where = json.loads(found.read_text())["best_template"], str(found)
        elif len(cfg.prompt) == 1:
            name, where = next(iter(cfg.prompt)), "the only selected prompt"
        else:
            raise ConfigError("sft.template: no templates.json beside the click logs says which prompt collect "
                              f"chose; set sft.template to one of {', '.join(cfg.prompt)}")
    if name not in cfg.prompt:
        raise ConfigError(f"sft.template: '{name}' (from {where}) is not among the selected prompts "
                          f"{list(cfg.prompt)}; add it with prompt=[{name},...]")
    return name


# --- training ------------------------------------------------------------------------------------


def fit_causal_lm(cfg, model, tok, train: list[dict], val: list[dict], tcfg, work: Path, loggers, prefix: str,
                  format_k: int, max_new_tokens: int, ckpt_path: Optional[str] = None) -> dict:
    """Fine-tune `model` on `{"messages", "target"}` examples with Lightning; resumes from `work`.

    Used for the policy (prefix `sft`) and the teacher (`teacher`). Returns training statistics.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from clicks2pref.lit.sft_datamodule import SFTDataModule
    from clicks2pref.lit.sft_module import SFTModule
    from clicks2pref.models.generate import GenerationConfig

    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = SFTDataModule(tok, train, val, tcfg.batch_size, tcfg.max_length, seed=cfg.seed)
    probe = [x["messages"] for x in val[:tcfg.format_probe]]
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=cfg.policy.generation.batch_size)
    module = SFTModule(model, instantiate(tcfg.optimizer), instantiate(tcfg.scheduler) if tcfg.scheduler else None,
                       prefix=prefix, tokenizer=tok, format_prompts=probe, format_k=format_k, generation=gen,
                       max_nonfinite_steps=tcfg.max_nonfinite_steps, validate_at_start=tcfg.validate_before)
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=tcfg.ckpt_every_n_steps)
    has_val = bool(dm.val_set)
    schedule = (dict(val_check_interval=tcfg.val_every_n_steps, check_val_every_n_epoch=None) if has_val
                and tcfg.val_every_n_steps > 0 else dict(limit_val_batches=0))
    trainer = instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=[checkpoint], max_steps=tcfg.max_steps,
                          max_epochs=-1, num_sanity_val_steps=0, **schedule, _convert_="object")
    last = work / "ckpt" / "last.ckpt"
    resume = ckpt_path or (str(last) if last.exists() else None)
    if resume:
        log.info("%s: resuming from %s", prefix, resume)
    share_csv_header(loggers)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    share_csv_header(loggers)  # spawned workers wrote the file: the main process's writer learns its columns
    found = trainer.callback_metrics
    metric = lambda name: float(found[name]) if name in found else None  # noqa: E731
    stats = {"data": dm.stats(), "resumed_from": resume, "steps": tcfg.max_steps,
             **{k: metric(f"{prefix}/{k}") for k in ("train_loss", "val_loss_before", "val_loss",
                                                     "val_format_rate_before", "val_format_rate")},
             "seconds": time.time() - start}
    log.info("%s: %d steps in %.0fs; val loss %s -> %s, val format rate %s", prefix, tcfg.max_steps, stats["seconds"],
             _fmt(stats.get("val_loss_before")), _fmt(stats["val_loss"]), _fmt(stats["val_format_rate"]))
    return stats


def share_csv_header(loggers) -> None:
    """Let a spawned process append to a CSVLogger file another fit already wrote.

    Each spawned DDP launch pickles the logger with an empty list of known columns; when its metrics
    add columns, Lightning rewrites the file with only its own and fails on the old ones. Seeding the
    list with the file's header (here, before the launch) makes it rewrite with the union.
    """
    import csv

    from pytorch_lightning.loggers import CSVLogger

    for lg in loggers:
        if isinstance(lg, CSVLogger):
            writer = lg.experiment
            if os.path.isfile(writer.metrics_file_path):
                with open(writer.metrics_file_path, newline="") as f:
                    header = next(csv.reader(f), [])
                writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# --- evaluation ----------------------------------------------------------------------------------


def evaluate(cfg, policy, tok, template, key: str) -> dict:
    """Oracle CTR (bootstrap CI) and format rate of the SFT policy, the prompted baseline and the paired lift.
    Both evaluations are kept in the evaluation cache (the evaluate stage and sweeps reuse them)."""
    from omegaconf import OmegaConf

    from clicks2pref.data.simulator import build_simulator, split_contexts
    from clicks2pref.eval.ctr import bootstrap_mean
    from clicks2pref.eval.policy import baseline_id, cached_evaluation
    from clicks2pref.models.registry import load_causal_lm

    ev = cfg.sft.eval
    start = time.time()
    sim = build_simulator(OmegaConf.to_object(cfg.simulator))
    split = cfg.data.split
    contexts = split_contexts(sim.world, split.val_fraction, split.test_fraction, split.seed)[ev.split]
    contexts = contexts[:ev.max_contexts] if ev.max_contexts else contexts

    def one(policy_id: str, load) -> dict:
        return cached_evaluation(cfg, policy_id, load, template, sim, ev.split, contexts, ev.bootstrap_samples,
                                 ev.ci_level)

    out = {"contexts": len(contexts), "split": ev.split}
    sft = one(f"sft:{key}", lambda: (policy, tok))
    out["sft"] = {k: sft[k] for k in ("oracle_ctr", "ci_low", "ci_high", "format_rate")}
    out["examples"] = [{"context": contexts[i], "sft": sft["outputs"][i]} for i in range(min(3, len(contexts)))]
    if ev.baseline:
        base = one(baseline_id(cfg), lambda: load_causal_lm(cfg.policy.model, cfg.paths.model_cache, seed=cfg.seed))
        out["baseline"] = {k: base[k] for k in ("oracle_ctr", "ci_low", "ci_high", "format_rate")}
        diff = [a - b for a, b in zip(sft["per_context_ctr"], base["per_context_ctr"])]
        lift = bootstrap_mean(diff, ev.bootstrap_samples, ev.ci_level, cfg.seed)
        out["lift"] = {"ctr_diff": lift.mean, "ci_low": lift.low, "ci_high": lift.high,
                       "relative": lift.mean / base["oracle_ctr"] if base["oracle_ctr"] else None}
        for ex, b in zip(out["examples"], base["outputs"]):
            ex["baseline"] = b
    out["seconds"] = time.time() - start
    return out


# --- the policy artifact -------------------------------------------------------------------------


def save_policy(model, tok, folder: Path, merged: Optional[Path] = None) -> None:
    """Adapter (LoRA) or full model plus the tokenizer, via save_pretrained (safetensors)."""
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if merged is not None and hasattr(model, "merge_and_unload"):
        import copy

        copy.deepcopy(model).merge_and_unload().save_pretrained(merged, safe_serialization=True)
        tok.save_pretrained(merged)


def load_sft_policy(path, cfg, merge: bool = True, trainable: bool = False):
    """(model, tokenizer) of an SFT artifact folder (`artifacts/sft/<key>`).

    A LoRA policy is its base model (recorded in `sft.json`) with the adapter; `merge=True` folds the
    adapter into the weights (a plain transformers model, what GRPO adds its own LoRA to), else the
    PEFT model is returned, its adapter trainable when `trainable`. A full fine-tune loads directly.
    """
    from clicks2pref.errors import ModelNotFoundError
    from clicks2pref.models.registry import ModelConfig, _from_pretrained, load_causal_lm, load_tokenizer

    path = Path(path)
    meta_file = path / "sft.json"
    if not meta_file.exists():
        raise ModelNotFoundError(f"{path} is not an SFT artifact (no sft.json); pass artifacts/sft/<key> "
                                 "from `python -m clicks2pref stage=sft`")
    meta = json.loads(meta_file.read_text())
    cache = cfg.paths.model_cache
    base = ModelConfig(**{**meta["model"], "lora": None})
    tok = load_tokenizer(replace(base, name=str(path / "policy")), cache)
    if meta["method"] == "full" or (merge and (path / "merged").exists()):
        from transformers import AutoModelForCausalLM

        folder = path / ("policy" if meta["method"] == "full" else "merged")
        model = _from_pretrained(AutoModelForCausalLM, str(folder), dtype=_dtype(base.dtype))
    else:
        from peft import PeftModel

        model, _ = load_causal_lm(replace(base, quantization=base.quantization if not merge else None), cache,
                                  seed=meta["seed"])
        model = PeftModel.from_pretrained(model, str(path / "policy"), is_trainable=trainable and not merge)
        if merge:
            model = model.merge_and_unload()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _dtype(name: str):
    from clicks2pref.models.registry import _torch_dtype

    return _torch_dtype(name)


# --- reports -------------------------------------------------------------------------------------


def markdown_report(result: dict) -> str:
    lines = [f"SFT data: {result['data']['groups']} context groups, {result['data']['clicked_suggestions']} clicked "
             f"suggestions; teacher: {result['teacher']['name']}; assembly "
             f"{'on' if result['assembly']['enabled'] else 'off'}",
             f"full panels: {result['assembly']['full_panels']} of {result['assembly']['contexts']} contexts; short: "
             + ", ".join(f"{k} {v}" for k, v in result["assembly"]["short_panels"].items())
             + "; rejected: " + (", ".join(f"{k} {v}" for k, v in result["assembly"]["rejected"].items()) or "none"),
             f"training: {result['train']['data']['train_examples']} examples, {result['train']['steps']} steps, "
             f"val loss {_fmt(result['train'].get('val_loss_before'))} -> {_fmt(result['train']['val_loss'])}, "
             f"val format rate {_fmt(result['train']['val_format_rate'])}", ""]
    ev = result.get("eval")
    if ev:
        lines += [f"Held-out {ev['split']} contexts: {ev['contexts']} (oracle CTR, {ev.get('ci', '95%')} bootstrap "
                  "CI)", "",
                  "| policy | oracle CTR | CI low | CI high | format rate |", "|---|---|---|---|---|"]
        for name in ("baseline", "sft"):
            if name in ev:
                m = ev[name]
                lines.append(f"| {name} | {m['oracle_ctr']:.4f} | {m['ci_low']:.4f} | {m['ci_high']:.4f} | "
                             f"{m['format_rate']:.3f} |")
        if "lift" in ev:
            lift = ev["lift"]
            lines += ["", f"paired CTR difference (SFT - baseline): {lift['ctr_diff']:+.4f} "
                          f"[{lift['ci_low']:+.4f}, {lift['ci_high']:+.4f}]"]
    return "\n".join(lines) + "\n"


def flat_metrics(result: dict) -> dict:
    out = {"sft/full_panels": result["assembly"]["full_panels"],
           "sft/train_examples": result["train"]["data"]["train_examples"]}
    for k in ("val_loss", "val_format_rate", "val_loss_before"):
        if result["train"].get(k) is not None:
            out[f"sft/{k}"] = result["train"][k]
    ev = result.get("eval") or {}
    for name in ("sft", "baseline"):
        if name in ev:
            out[f"sft/{name}_oracle_ctr"] = ev[name]["oracle_ctr"]
            out[f"sft/{name}_ctr_ci_low"] = ev[name]["ci_low"]
            out[f"sft/{name}_ctr_ci_high"] = ev[name]["ci_high"]
            out[f"sft/{name}_format_rate"] = ev[name]["format_rate"]
    if "lift" in ev:
        out["sft/ctr_lift"] = ev["lift"]["ctr_diff"]
    return out


# --- the stage -----------------------------------------------------------------------------------


def run(cfg, loggers=()) -> dict:
    from clicks2pref.data.assembly import assemble, build_embedder
    from clicks2pref.data.io import load_impressions, write_jsonl
    from clicks2pref.data.prompts import build_messages
    from clicks2pref.data.sft_data import click_groups, click_summary, single_suggestion_examples, split_groups
    from clicks2pref.data.sources import click_log_source
    from clicks2pref.errors import ClickLogError
    from clicks2pref.loggers import log_metrics
    from clicks2pref.models.registry import load_causal_lm
    from clicks2pref.stages.artifacts import artifact_path, atomic_dir
    from clicks2pref.stages.teacher import teacher_candidates

    sft = cfg.sft
    model_cfg = training_model_config(cfg.policy.model, sft.method, sft.lora)
    template_name = resolve_template(cfg)
    key = keyed(cfg, "sft", template_name)
    final = artifact_path(cfg, "sft", key)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.cache and (final / "sft.json").exists():
        log.info("sft: reusing %s", final)
        result = json.loads((final / "sft.json").read_text())
        _write_reports(result, out_dir, metrics=cfg.stage.name == "sft")
        print("\n" + markdown_report(result))
        return result

    start = time.time()
    source = click_log_source(cfg)
    template = cfg.prompt[template_name]
    groups = click_groups(load_impressions(source, cfg.data.on_invalid), sft.data)
    if not any(g["candidates"] for g in groups):
        raise ClickLogError(f"no suggestion clicked at least {sft.data.min_clicks} time(s) in weeks "
                            f"{sft.data.first_week}..{sft.data.last_week or 'last'}; widen sft.data", str(source))
    summary = click_summary(groups)
    log.info("sft: %d context groups, %d clicked suggestions from %s; template %s", summary["groups"],
             summary["clicked_suggestions"], source, template_name)

    # (b) candidates: the clicks, or the teacher's samples
    cand_groups, teacher_result = teacher_candidates(cfg, groups, loggers)
    # (c) assembly
    embedder = build_embedder(sft.assembly) if sft.assembly.enabled else None
    examples, assembly = assemble(cand_groups, embedder, sft.assembly)
    log.info("sft: assembly %s: %d full panels of %d contexts; short %s; rejected %s",
             "on" if sft.assembly.enabled else "off", assembly["full_panels"], assembly["contexts"],
             assembly["short_panels"], assembly["rejected"])
    if not examples:
        raise ClickLogError("assembly produced no full panel; see the short-panel reasons above: collect more logs, "
                            "use a teacher (teacher=smollm2) or relax sft.assembly", str(source))
    _, val_groups = split_groups(groups, sft.data.val_fraction)
    val_keys = {g["group"] for g in val_groups}

    def as_messages(rows: list[dict]) -> list[dict]:
        return [{"messages": build_messages(template, r["context"]), "target": r["target"]} for r in rows]

    train_rows = [e for e in examples if e["group"] not in val_keys]
    val_rows = [e for e in examples if e["group"] in val_keys]
    if not train_rows:
        train_rows, val_rows = examples, []

    # (d) fine-tune
    work = final.parent / f".work-{key}"
    model, tok = load_causal_lm(model_cfg, cfg.paths.model_cache, seed=cfg.seed)
    train_stats = fit_causal_lm(cfg, model, tok, as_messages(train_rows), as_messages(val_rows), sft.train,
                                work / "policy", loggers, "sft", len(cfg.simulator.examination),
                                cfg.policy.generation.max_new_tokens, ckpt_path=cfg.ckpt_path)
    result = {"key": key, "template": template_name, "method": sft.method, "logs": str(source),
              "data": summary, "teacher": teacher_result, "assembly": assembly,
              "sources": {s: sum(e["source"] == s for e in examples) for s in ("click", "teacher")},
              "train": train_stats, "model": asdict(model_cfg), "seed": cfg.seed}
    if sft.eval.enabled:
        result["eval"] = evaluate(cfg, model, tok, template, key)
        result["eval"]["ci"] = f"{sft.eval.ci_level:.0%}"
    result["seconds"] = time.time() - start
    with atomic_dir(final) as tmp:
        save_policy(model, tok, tmp / "policy", tmp / "merged" if sft.save_merged and sft.method != "full" else None)
        write_jsonl(examples, tmp / "sft_data.jsonl")
        write_jsonl(single_suggestion_examples(groups), tmp / "single.jsonl")
        write_jsonl([{"group": g["group"], "context": g["context"], "candidates": g["candidates"]}
                     for g in cand_groups], tmp / "candidates.jsonl")
        result["path"] = str(final)
        _write_reports(result, tmp)
    shutil.rmtree(work, ignore_errors=True)
    _write_reports(result, out_dir, metrics=cfg.stage.name == "sft")
    log_metrics(loggers, flat_metrics(result))
    print("\n" + markdown_report(result))
    print(f"SFT policy ({sft.method}) -> {final / 'policy'} in {result['seconds']:.0f}s")
    return result


def _write_reports(result: dict, folder: Path, metrics: bool = True) -> None:
    """sft.json and sft.md; metrics.json (what `clicks2pref.report` tabulates) only where sft is the job's
    own stage, so a later stage that runs sft first keeps the run folder's metrics.json for itself."""
    (folder / "sft.json").write_text(json.dumps(result, indent=2))
    (folder / "sft.md").write_text(markdown_report(result))
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(flat_metrics(result), indent=2))
