"""Step 4, rm (paper stage 3, reward models): GaRM and BTRM trained on clicks, then calibration and agreement
with the oracle (SPEC 5.3, 5.6).

Reads click logs (`data.logs` or this config's collect output), the SFT policy's served weeks (stage
`serve`, `serve.rm_weeks`: the panels RL will compare) and optionally `data.ood_logs`, and trains each
kind in `reward_model.kinds` with Lightning on weeks 1–3 and the served weeks: on every impression under
a click model with learned examination (`objective=click_model`, the default), or on clicked ≻ skipped
pairs (`objective=pairwise`, the paper's). Week 4 is the IID test, OOD logs the OOD test; every model
is scored on both objectives' terms (pairwise accuracy and ECE) and against the oracle (Spearman ρ of
its score with each logged suggestion's true click probability). Writes under `artifacts/rm/<key>/`:
`<kind>/` (the model, loadable with `clicks2pref.models.reward_heads.load_reward_model`),
`pairs/<split>.jsonl`, `calibration.json`, `calibration.md`, `reliability_<kind>_<split>.png` and
`rm.json`; the reports are copied to the run folder. A killed run resumes: each kind's last
Lightning checkpoint and each finished model wait in `artifacts/rm/.work-<key>/`.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from clicks2pref.data.impressions import impression_examples, impression_splits
from clicks2pref.data.io import load_impressions, write_jsonl
from clicks2pref.data.log_splits import position_order, week_roles
from clicks2pref.data.offline_mode import check_configured_weeks, log_split, uses_simulator
from clicks2pref.data.pairs import build_pairs, pair_splits
from clicks2pref.data.simulator import build_simulator
from clicks2pref.data.traffic import served as served_week
from clicks2pref.errors import ClickLogError
from clicks2pref.eval.calibration_report import markdown_report, write_report
from clicks2pref.eval.rm_calibration import calibrate, reference_ppl
from clicks2pref.lit.checkpoints import resume_checkpoint
from clicks2pref.eval.oracle_agreement import reward_oracle_agreement
from clicks2pref.lit.reward_module import reward_training, similarity_above_examples  # noqa: F401 (its old home)
from clicks2pref.loggers import log_metrics, log_table
from clicks2pref.models.reward_heads import build_reward_model, load_reward_model, save_reward_model
from clicks2pref.objectives import objective_reads
from clicks2pref.report import write_job_metrics
from clicks2pref.models.shared_prefix import cached_outputs
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)
METRICS = ("n_pairs", "accuracy", "ece", "sigma_mean", "oracle_spearman", "oracle_within_panel")


def run(cfg, inputs: dict, loggers=()) -> dict:
    rm = cfg.reward_model
    # 1. what rm reads: the click logs (collect runs first when they are its output) and data.ood_logs
    key = artifacts.key(cfg, "rm", inputs)
    final = artifacts.artifact_path(cfg, "rm", key)
    if (result := artifacts.reuse(cfg, "rm", key)) is not None:
        return publish(cfg, result, None, loggers, fresh=False)

    # 2. clicked ≻ skipped pairs per split, and the reference log-perplexity of the test suggestions
    start = time.time()
    splits, examples, notes = load_splits(cfg, inputs.get("serve"))
    log.info("rm: pairs %s; impressions %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
             ", ".join(f"{k} {sum(e['count'] for e in v)}" for k, v in examples.items()))
    ppl = reference_ppl(cfg, splits) if rm.calibration.reference_ppl else {}
    # evaluation only: the agreement of each model with the truth (none without the simulator)
    sim = build_simulator(cfg.simulator) if uses_simulator(cfg) else None
    work = artifacts.work_dir(cfg, "rm", key)
    report = {"key": key, "objective": rm.objective, "pairs": {k: len(v) for k, v in splits.items()},
              "impressions": {k: sum(e["count"] for e in v) for k, v in examples.items()}, "notes": notes,
              "kinds": {}}
    with artifacts.atomic_dir(final) as tmp:
        for split, pairs in splits.items():
            write_jsonl(pairs, tmp / "pairs" / f"{split}.jsonl")
        # 3. each kind trained (or resumed) in turn, then calibrated on every split
        for kind in rm.kinds:
            model, stats = train_one(cfg, kind, splits, examples, work / kind, loggers)
            eval_start = time.time()
            score = cached_outputs(model, rm.calibration.batch_size)  # pairs and impressions share suggestions
            res = {**stats, "splits": calibrate(cfg, model, splits, ppl, score)}
            for split, v in examples.items() if sim is not None else ():
                if split in res["splits"] and v:
                    res["splits"][split].update(reward_oracle_agreement(model, v, sim, score=score))
            res["eval_seconds"] = time.time() - eval_start
            report["kinds"][kind] = res
            shutil.copytree(work / kind / "model", tmp / kind)
            log.info("rm: %s trained in %.0fs (%d steps), evaluated in %.0fs: %s", kind, stats["train_seconds"],
                     stats["steps"], res["eval_seconds"], ", ".join(
                         f"{s} acc {m.get('accuracy', float('nan')):.3f} ECE {m.get('ece', float('nan')):.4f} "
                         f"oracle ρ {m.get('oracle_spearman', float('nan')):.3f}"
                         for s, m in res["splits"].items() if m.get("n_pairs")))
            del model
        # 4. the calibration report and the result, written last
        report["seconds"] = time.time() - start
        write_report(report, tmp)
        result = {"key": key, "models": {k: str(final / k) for k in rm.kinds}, "pairs": report["pairs"],
                  "metrics": {k: {s: {m: v.get(m) for m in METRICS} for s, v in r["splits"].items()}
                              for k, r in report["kinds"].items()},
                  "examination": {k: r.get("examination") for k, r in report["kinds"].items()},
                  "train_seconds": {k: r["train_seconds"] for k, r in report["kinds"].items()},
                  "max_grad_norm": {k: r["max_grad_norm"] for k, r in report["kinds"].items()},
                  "seconds": report["seconds"]}
        (tmp / "rm.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return publish(cfg, result, report, loggers, fresh=True)


def load_splits(cfg, served: Optional[dict] = None) -> tuple[dict[str, list[dict]], dict[str, list[dict]], list[str]]:
    """Pairs and impression examples per split, and notes for the report (where the OOD split came from).

    `served`: stage serve's result; its reward-model weeks (the SFT policy's own panels) join the training weeks."""
    pcfg = cfg.reward_model.pairs
    source = artifacts.logs_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    check_configured_weeks(cfg, records, source)
    warn_unrandomised(records)
    # the weeks from the logs themselves: every week but the last trains, the last is the IID test; one week
    # alone splits by conversation (the held-out ones are the IID test)
    train_weeks, test_weeks = week_roles(records, pcfg.train_weeks, pcfg.test_weeks)
    held = [] if test_weeks else log_split(cfg, records).heldout
    if held:
        held_ids = {r["impression_id"] for r in held}
        records = [r for r in records if r["impression_id"] not in held_ids]
    split_by = f"IID test weeks {test_weeks}" if test_weeks else \
        f"IID test: {len(held)} impressions of held-out conversations (one week of logs)"
    extra = []
    for week in (served or {}).get("rm_weeks", []):
        records += served_week(artifacts.artifact_path(cfg, "serve", served["key"]), week, cfg.data.format,
                               cfg.data.on_invalid)[0]
        extra.append(week)
    pcfg = OmegaConf.merge(pcfg, {"train_weeks": [*train_weeks, *extra], "test_weeks": test_weeks})
    ood = load_impressions(cfg.data.ood_logs, cfg.data.on_invalid) if cfg.data.ood_logs else None
    splits = pair_splits(records, pcfg, ood)
    examples = impression_splits(records, pcfg, ood)
    if held:
        splits["iid"] = build_pairs(held, pcfg.position_filter)
        examples["iid"] = impression_examples(held)
    weeks = sorted({r["week"] for r in records})
    if objective_reads(cfg.reward_model.objective) == "impressions":
        if not examples["train"]:
            raise ClickLogError(f"no impressions in weeks {list(pcfg.train_weeks)} of the logs (weeks present: "
                                f"{weeks}); set reward_model.pairs.train_weeks", str(source),
                                field="reward_model.pairs")
    elif not splits["train"]:
        raise ClickLogError(f"no training pairs ({pcfg.position_filter}) in weeks {list(pcfg.train_weeks)} of the "
                            f"logs (weeks present: {weeks}); set reward_model.pairs.train_weeks or "
                            f"reward_model.pairs.position_filter", str(source), field="reward_model.pairs")
    notes = [f"pairs: {pcfg.position_filter}; train weeks {list(pcfg.train_weeks)} (val {pcfg.val_fraction:.0%} of "
             f"panels), {split_by}; logs {source}"
             + (f", and the SFT policy's served weeks {extra}" if extra else "")]
    if ood is None:
        notes.append("no OOD split: set data.ood_logs to another policy's click logs")
    else:
        notes.append(f"OOD split: {cfg.data.ood_logs} (policies {sorted({r['policy'] for r in ood})})")
    notes.append(f"trained on {cfg.reward_model.objective}; oracle ρ: Spearman of the model's score with each logged "
                 f"suggestion's true click probability (evaluation only)" if uses_simulator(cfg) else
                 f"trained on {cfg.reward_model.objective}; no simulator, so no oracle ρ: judge the models by "
                 f"held-out accuracy and calibration")
    return splits, examples, notes


def warn_unrandomised(records: list[dict]) -> None:
    """One warning line when the logs never showed a suggestion at two positions: position is then confounded
    with content, and a reward model learns position."""
    order = position_order(records)
    if order["repeated"] and not order["randomised"]:
        log.warning("rm: positions were never randomised in these logs (each of %d repeated suggestions was always "
                    "at the same position): the examination is not identified and the reward models will learn "
                    "position; log some traffic with the panel order shuffled per impression", order["repeated"])


def train_one(cfg, kind: str, splits: dict, examples: dict, work: Path, loggers) -> tuple[object, dict]:
    """Train (or resume, or reuse from `work`) one reward model; returns (model, training stats)."""
    rm = cfg.reward_model
    if (work / "model" / "reward_model.json").exists() and (work / "train.json").exists():
        log.info("rm: %s already trained in %s, reusing", kind, work)
        return load_reward_model(work / "model", cfg.paths.model_cache), json.loads((work / "train.json").read_text())
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = OmegaConf.to_object(rm.backbone)
    model = build_reward_model(kind, backbone, OmegaConf.to_object(rm.head), cfg.paths.model_cache, cfg.seed)
    model.train()  # from_pretrained returns eval mode, which Lightning keeps (no LoRA / BERT dropout)
    module, data = reward_training(model, rm, splits, examples, cfg.seed)  # its objective's module and data
    checkpoint = ModelCheckpoint(dirpath=work / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=rm.checkpoint_every_n_steps)
    trainer = instantiate(cfg.trainer, logger=list(loggers) or False, callbacks=[checkpoint],
                          max_epochs=rm.optim.epochs, _convert_="object")
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(work, None, f"rm {kind}"), weights_only=True)
    stats = {"train_seconds": time.time() - start, "steps": int(trainer.global_step),
             "max_grad_norm": module.max_grad_norm, "nonfinite_steps": module.nonfinite_steps,
             "val": {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if "/val_" in k}}
    stats.update(module.fitted())  # e.g. the click model's examination, stored with the model
    save_reward_model(model, work / "model", backbone, cfg.seed, extra={"stats": stats})
    (work / "train.json").write_text(json.dumps(stats, indent=2))
    return model, stats


def flat_metrics(result: dict) -> dict:
    """rm/<kind>/<split>_acc, _ece, _sigma_mean (GaRM) and the largest gradient norm, per trained model."""
    out = {}
    for kind, splits in result["metrics"].items():
        for split, m in splits.items():
            for name in ("oracle_spearman", "oracle_within_panel"):
                if m.get(name) is not None:
                    out[f"rm/{kind}/{split}_{name}"] = m[name]
            if m.get("n_pairs"):
                out.update({f"rm/{kind}/{split}_acc": m["accuracy"], f"rm/{kind}/{split}_ece": m["ece"]})
                if m.get("sigma_mean") is not None:
                    out[f"rm/{kind}/{split}_sigma_mean"] = m["sigma_mean"]
        out[f"rm/{kind}/max_grad_norm"] = result["max_grad_norm"][kind]
        for k, e in enumerate(result.get("examination", {}).get(kind) or []):
            out[f"rm/{kind}/exam_{k + 1}"] = e
    return out


def publish(cfg, result: dict, report, loggers, fresh: bool) -> dict:
    """The calibration report (and reliability plots) in the run folder; metrics and tables for a fresh result."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = artifacts.artifact_path(cfg, "rm", result["key"])
    write_job_metrics(cfg, "rm", flat_metrics(result))
    log_metrics(loggers, flat_metrics(result))  # a reused stage's stored metrics too: a sweep's runs are complete
    if not fresh:  # rendered again from the stored numbers: the report's code is not part of the key
        report = json.loads((final / "calibration.json").read_text())
        write_report(report, out_dir)
        if cfg.stage.name == "rm":  # the job's own stage: its report; an upstream one stays quiet
            print(markdown_report(report))
        return result
    written = write_report(report, out_dir)
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
