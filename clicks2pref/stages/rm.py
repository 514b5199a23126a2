"""Stage 3 (reward models): GaRM and BTRM trained on click preference pairs, then calibration (SPEC 5.3, 5.6).

Reads click logs (`data.logs` or this config's collect output) and optionally `data.ood_logs`,
builds pairs (clicked ≻ skipped, weeks 1–3 train, week 4 IID test, OOD logs the OOD test), trains
each kind in `reward_model.kinds` with Lightning and writes under `artifacts/rm/<key>/`:
`<kind>/` (the model, loadable with `clicks2pref.models.reward_heads.load_reward_model`),
`pairs/<split>.jsonl`, `calibration.json`, `calibration.md`, `reliability_<kind>_<split>.png` and
`rm.json`; the reports are copied to the run folder. A killed run resumes: each kind's last
Lightning checkpoint and each finished model wait in `artifacts/rm/.work-<key>/`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from clicks2pref.data.pairs import PairConfig
from clicks2pref.eval.calibration_report import CalibrationConfig
from clicks2pref.models.registry import SMOLLM2, LoraConfig, ModelConfig
from clicks2pref.models.reward_heads import KINDS, HeadConfig

log = logging.getLogger(__name__)


def _variance_reg_init(self, kind: str = "kl_prior", **kwargs):
    self.kind = kind
    setattr(self, "lambda", kwargs.pop("lambda", 0.1))
    if kwargs:
        raise TypeError(f"unexpected variance_reg keys: {', '.join(kwargs)}")


# GaRM's variance regulariser R and its weight λ. The key is `lambda` (SPEC 5.3), a Python keyword,
# so the dataclass is assembled by hand; read the value with getattr(cfg, "lambda") or cfg["lambda"].
VarianceRegConfig = dataclass(init=False, repr=False, eq=False)(type("VarianceRegConfig", (), {
    "__doc__": "kind: kl_prior | sigma_l2 | log_sigma_sq | none; lambda: its weight λ in the loss.",
    "__module__": __name__,
    "__annotations__": {"kind": str, "lambda": float},
    "kind": "kl_prior",
    "lambda": 0.1,
    "__init__": _variance_reg_init,
}))


@dataclass
class RewardLossConfig:
    likelihood: str = "probit"  # GaRM: probit (closed form) | mc_logistic (PURM-style samples)
    z_clamp: Optional[float] = 6.0  # probit: z clipped to [-z_clamp, z_clamp]; null = no clamp
    mc_samples: int = 16  # mc_logistic: reparameterised draws per pair
    variance_reg: VarianceRegConfig = field(default_factory=VarianceRegConfig)
    margin: Optional[float] = None  # BTRM: constant margin in −log σ(r_c − r_r − margin) (TRL's `margin`)
    center_rewards_coefficient: Optional[float] = None  # BTRM: TRL's reward-centring term weight


@dataclass
class RewardOptimConfig:
    epochs: int = 2  # passes over the training pairs (sets the Trainer's max_epochs for this stage)
    groups_per_batch: int = 4  # panels per batch (all their pairs; ~3 suggestions each)
    lr: float = 2e-4  # LoRA adapters (or the whole backbone when lora is null)
    head_lr: float = 1e-3  # the μ/σ or reward head
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # linear warm-up share of the steps, then linear decay to 0


@dataclass
class RewardModelConfig:
    kinds: List[str] = field(default_factory=lambda: ["garm", "btrm"])
    backbone: ModelConfig = field(default_factory=lambda: ModelConfig(name=SMOLLM2, lora=LoraConfig()))
    head: HeadConfig = field(default_factory=HeadConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    optim: RewardOptimConfig = field(default_factory=RewardOptimConfig)
    max_nonfinite_steps: int = 10
    checkpoint_every_n_steps: int = 25
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


def rm_key(cfg) -> str:
    """stage_key of rm with what it reads folded in: the click logs (collect's key or the files' bytes)
    and the OOD logs' bytes."""
    from clicks2pref.data.io import expand_sources
    from clicks2pref.stages.artifacts import stage_key
    from clicks2pref.stages.sft import logs_fingerprint

    ood = hashlib.sha256()
    for path in expand_sources(cfg.data.ood_logs) if cfg.data.ood_logs else []:
        ood.update(path.name.encode())
        ood.update(path.read_bytes())
    blob = f"{stage_key(cfg, 'rm')}|{logs_fingerprint(cfg)}|{ood.hexdigest()[:16]}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_config(rm) -> None:
    """What the schema cannot say: kinds and loss names exist (before any model loads)."""
    from clicks2pref.data.pairs import POSITION_FILTERS
    from clicks2pref.errors import ConfigError
    from clicks2pref.objectives.gaussian import LIKELIHOODS, REGULARIZERS

    checks = [("reward_model.kinds", list(rm.kinds), KINDS),
              ("reward_model.loss.likelihood", [rm.loss.likelihood], LIKELIHOODS),
              ("reward_model.loss.variance_reg.kind", [rm.loss.variance_reg.kind], REGULARIZERS),
              ("reward_model.pairs.position_filter", [rm.pairs.position_filter], POSITION_FILTERS),
              ("reward_model.head.pooling", [rm.head.pooling], ("last", "mean"))]
    for key, values, accepted in checks:
        bad = [v for v in values if v not in accepted]
        if bad:
            raise ConfigError(f"{key}: unknown {bad[0]!r}; accepted: {', '.join(accepted)}")
    if not rm.kinds:
        raise ConfigError("reward_model.kinds is empty; train at least one of garm, btrm")


def load_splits(cfg) -> tuple[dict[str, list[dict]], list[str]]:
    """Pairs per split and notes for the report (where the OOD split came from)."""
    from clicks2pref.data.io import load_impressions
    from clicks2pref.data.pairs import pair_splits
    from clicks2pref.data.sources import click_log_source
    from clicks2pref.errors import ClickLogError

    pcfg = cfg.reward_model.pairs
    source = click_log_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    ood = load_impressions(cfg.data.ood_logs, cfg.data.on_invalid) if cfg.data.ood_logs else None
    splits = pair_splits(records, pcfg, ood)
    weeks = sorted({r["week"] for r in records})
    if not splits["train"]:
        raise ClickLogError(f"no training pairs ({pcfg.position_filter}) in weeks {list(pcfg.train_weeks)} of the "
                            f"logs (weeks present: {weeks}); set reward_model.pairs.train_weeks or "
                            f"reward_model.pairs.position_filter", str(source), field="reward_model.pairs")
    notes = [f"pairs: {pcfg.position_filter}; train weeks {list(pcfg.train_weeks)} (val {pcfg.val_fraction:.0%} of "
             f"panels), IID test weeks {list(pcfg.test_weeks)}; logs {source}"]
    if ood is None:
        notes.append("no OOD split: set data.ood_logs to another policy's click logs")
    else:
        notes.append(f"OOD split: {cfg.data.ood_logs} (policies {sorted({r['policy'] for r in ood})})")
    return splits, notes


def reference_ppl(cfg, splits: dict[str, list[dict]]) -> dict:
    """Reference log-perplexity of every suggestion in the test splits, keyed by item."""
    from clicks2pref.eval.calibration_report import reference_log_ppl, unique_items
    from clicks2pref.models.registry import load_causal_lm

    items = {}
    for split in ("iid", "ood"):
        items.update(unique_items(splits.get(split, [])))
    if not items:
        return {}
    start = time.time()
    model, tok = load_causal_lm(cfg.policy.model, cfg.paths.model_cache, seed=cfg.seed)
    keys = list(items)
    cal = cfg.reward_model.calibration
    values = reference_log_ppl(model, tok, [items[k] for k in keys], cal.batch_size, cal.max_length)
    log.info("rm: reference log-perplexity of %d suggestions under %s (%.0fs)", len(keys), cfg.policy.model.name,
             time.time() - start)
    return {k: float(v) for k, v in zip(keys, values)}


def train_one(cfg, kind: str, splits: dict, work: Path, loggers) -> tuple[object, dict]:
    """Train (or resume, or reuse from `work`) one reward model; returns (model, training stats)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import ModelCheckpoint

    from clicks2pref.lit.reward_module import RewardModule, pair_loader
    from clicks2pref.models.reward_heads import build_reward_model, load_reward_model, save_reward_model

    rm = cfg.reward_model
    if (work / "model" / "reward_model.json").exists() and (work / "train.json").exists():
        log.info("rm: %s already trained in %s, reusing", kind, work)
        return load_reward_model(work / "model", cfg.paths.model_cache), json.loads((work / "train.json").read_text())
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = OmegaConf.to_object(rm.backbone)
    model = build_reward_model(kind, backbone, OmegaConf.to_object(rm.head), cfg.paths.model_cache, cfg.seed)
    model.train()  # from_pretrained returns eval mode, which Lightning keeps (no LoRA / BERT dropout)
    module = RewardModule(model, rm.loss, rm.optim, rm.max_nonfinite_steps, rm.calibration.n_bins)
    train = pair_loader(model, splits["train"], rm.optim.groups_per_batch, shuffle=True, seed=cfg.seed)
    val = pair_loader(model, splits["val"], rm.optim.groups_per_batch, shuffle=False) if splits["val"] else None
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=rm.checkpoint_every_n_steps)
    trainer = instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=[checkpoint],
                          max_epochs=rm.optim.epochs, _convert_="object")
    last = work / "ckpt" / "last.ckpt"
    if last.exists():
        log.info("rm: resuming %s from %s", kind, last)
    trainer.fit(module, train, val, ckpt_path=str(last) if last.exists() else None)
    stats = {"train_seconds": time.time() - start, "steps": int(trainer.global_step),
             "max_grad_norm": module.max_grad_norm, "nonfinite_steps": module.nonfinite_steps,
             "val": {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "/val_" in k}}
    save_reward_model(model, work / "model", backbone, cfg.seed, extra={"stats": stats})
    (work / "train.json").write_text(json.dumps(stats, indent=2))
    return model, stats


def calibrate(cfg, model, splits: dict, ppl: dict) -> dict:
    """split -> accuracy, ECE, reliability bins and decile tables of one reward model (SPEC 5.6)."""
    from clicks2pref.eval.calibration_report import calibration_metrics, pair_log_ppl, pair_predictions

    cal = cfg.reward_model.calibration
    out = {}
    for split in ("val", "iid", "ood"):
        if split not in splits:
            continue
        if not splits[split]:  # e.g. OOD logs in which nobody clicked below the top position
            out[split] = {"n_pairs": 0}
            continue
        pred = pair_predictions(model, splits[split], cal.batch_size)
        log_ppl = pair_log_ppl(splits[split], ppl) if ppl and split != "val" else None
        out[split] = calibration_metrics(pred, cal.n_bins, cal.n_deciles, log_ppl)
    return out


def flat_metrics(result: dict) -> dict:
    """rm/<kind>/<split>_acc, _ece, _sigma_mean (GaRM) and the largest gradient norm, per trained model."""
    out = {}
    for kind, splits in result["metrics"].items():
        for split, m in splits.items():
            if m.get("n_pairs"):
                out.update({f"rm/{kind}/{split}_acc": m["accuracy"], f"rm/{kind}/{split}_ece": m["ece"]})
                if m.get("sigma_mean") is not None:
                    out[f"rm/{kind}/{split}_sigma_mean"] = m["sigma_mean"]
        out[f"rm/{kind}/max_grad_norm"] = result["max_grad_norm"][kind]
    return out


def pair_counts(splits: dict) -> str:
    return ", ".join(f"{k} {len(v)}" for k, v in splits.items())


def run(cfg, loggers=()) -> dict:
    from clicks2pref.data.io import write_jsonl
    from clicks2pref.eval.calibration_report import markdown_report, write_report
    from clicks2pref.loggers import log_metrics, log_table
    from clicks2pref.report import write_job_metrics
    from clicks2pref.stages.artifacts import artifact_path, atomic_dir

    rm = cfg.reward_model
    check_config(rm)
    key = rm_key(cfg)
    final = artifact_path(cfg, "rm", key)
    out_dir = Path(cfg.paths.output_dir)
    reports = ["calibration.json", "calibration.md"]
    if cfg.cache and (final / "rm.json").exists():
        log.info("rm: reusing %s", final)
        for f in reports + [p.name for p in final.glob("reliability_*.png")]:
            shutil.copyfile(final / f, out_dir / f)
        result = json.loads((final / "rm.json").read_text())
        write_job_metrics(cfg, "rm", flat_metrics(result))
        print((final / "calibration.md").read_text())
        return result

    start = time.time()
    splits, notes = load_splits(cfg)
    log.info("rm: pairs %s", pair_counts(splits))
    ppl = reference_ppl(cfg, splits) if rm.calibration.reference_ppl else {}
    work = final.parent / f".work-{key}"
    report = {"key": key, "pairs": {k: len(v) for k, v in splits.items()}, "notes": notes, "kinds": {}}
    with atomic_dir(final) as tmp:
        for split, pairs in splits.items():
            write_jsonl(pairs, tmp / "pairs" / f"{split}.jsonl")
        for kind in rm.kinds:
            model, stats = train_one(cfg, kind, splits, work / kind, loggers)
            eval_start = time.time()
            res = {**stats, "splits": calibrate(cfg, model, splits, ppl)}
            res["eval_seconds"] = time.time() - eval_start
            report["kinds"][kind] = res
            shutil.copytree(work / kind / "model", tmp / kind)
            log.info("rm: %s trained in %.0fs (%d steps), evaluated in %.0fs: %s", kind, stats["train_seconds"],
                     stats["steps"], res["eval_seconds"], ", ".join(
                         f"{s} acc {m.get('accuracy', float('nan')):.3f} ECE {m.get('ece', float('nan')):.4f}"
                         for s, m in res["splits"].items() if m.get("n_pairs")))
            del model
        report["seconds"] = time.time() - start
        write_report(report, tmp)
        result = {"key": key, "models": {k: str(final / k) for k in rm.kinds}, "pairs": report["pairs"],
                  "metrics": {k: {s: {m: v.get(m) for m in ("n_pairs", "accuracy", "ece", "sigma_mean")}
                                  for s, v in r["splits"].items()} for k, r in report["kinds"].items()},
                  "train_seconds": {k: r["train_seconds"] for k, r in report["kinds"].items()},
                  "max_grad_norm": {k: r["max_grad_norm"] for k, r in report["kinds"].items()},
                  "seconds": report["seconds"]}
        (tmp / "rm.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    written = write_report(report, out_dir)

    log_metrics(loggers, flat_metrics(result))
    write_job_metrics(cfg, "rm", flat_metrics(result))
    for kind, res in report["kinds"].items():
        for split, v in res["splits"].items():
            if v.get("by_confidence"):
                log_table(loggers, f"rm/{kind}/{split}/by_confidence",
                          [{"decile": r["group"], "confidence": r["confidence"], "accuracy": r["accuracy"],
                            "count": r["count"]} for r in v["by_confidence"]])
    for lg in loggers:
        if hasattr(lg, "log_image"):
            for path in written[2:]:
                lg.log_image(key=f"rm/{path.stem}", images=[str(path)])
    print("\n" + markdown_report(report))
    print(f"reward models -> {final}")
    return result
