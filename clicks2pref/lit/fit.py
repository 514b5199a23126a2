"""Fine-tuning a causal LM on `{"messages", "target"}` examples with Lightning: the policy's SFT and its teacher.

One function so both share checkpoint-resume, validation schedule and metric names (`<prefix>/...`).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from clicks2pref.config.model import GenerationConfig
from clicks2pref.data.io import atomic_write_text
from clicks2pref.errors import NonFiniteLossError
from clicks2pref.lit.checkpoints import resume_checkpoint
from clicks2pref.lit.sft_datamodule import SFTDataModule
from clicks2pref.lit.sft_module import SFTModule

log = logging.getLogger(__name__)


def fit_causal_lm(cfg, model, tok, train: list[dict], val: list[dict], tcfg, work: Path, loggers, prefix: str,
                  format_k: int, max_new_tokens: int, ckpt_path: Optional[str] = None) -> dict:
    """Fine-tune `model` in place; resumes from the last checkpoint in `work`. Returns training statistics."""
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
    resume = resume_checkpoint(work, ckpt_path, prefix)
    share_csv_header(loggers)
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    share_csv_header(loggers)  # spawned workers wrote the file: the main process's writer learns its columns
    found = trainer.callback_metrics
    metric = lambda name: float(found[name]) if name in found else None  # noqa: E731
    stats = {"data": dm.stats(), "resumed_from": resume, "steps": tcfg.max_steps,
             "nonfinite_steps": module.nonfinite_total,
             **{k: metric(f"{prefix}/{k}") for k in ("train_loss", "val_loss_before", "val_loss",
                                                     "val_format_rate_before", "val_format_rate")},
             "seconds": time.time() - start}
    stats = finished_stats(work / "fit_stats.json", stats)
    log.info("%s: %d steps in %.0fs; val loss %s -> %s, val format rate %s", prefix, tcfg.max_steps, stats["seconds"],
             fmt(stats.get("val_loss_before")), fmt(stats["val_loss"]), fmt(stats["val_format_rate"]))
    if stats["val_loss"] is not None and not math.isfinite(stats["val_loss"]):
        # finite training losses can still leave NaN weights (an overflowing gradient step): the policy would
        # sample nothing, and a later stage would fail far from the cause
        raise NonFiniteLossError(
            f"{prefix}: validation loss {fmt(stats.get('val_loss_before'))} -> {stats['val_loss']} after "
            f"{tcfg.max_steps} steps: the weights diverged. Lower {prefix}.train.optimizer.lr, or train in fp32 "
            "(trainer.precision=32; seen with SmolLM2 under trainer=gpu's bf16-mixed)")
    return stats


def finished_stats(path: Path, stats: dict) -> dict:
    """`stats`, with what a resumed fit could not measure again taken from the finished fit's own record.

    A run killed after its fit finished (while its artifact was being written) resumes from the last checkpoint,
    where no step is left to run, so the training loss and the validation before the first step are not
    measured again: the finished fit wrote them to `path`, and they come back from there. A fit that ran writes
    its record for the next resume."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("steps") == stats["steps"]:
            stats = {**stats, **{k: v for k, v in saved.items() if stats.get(k) is None}}
    atomic_write_text(json.dumps(stats), path)
    return stats


def share_csv_header(loggers) -> None:
    """Let a spawned process append to a CSVLogger file another fit already wrote.

    Each spawned DDP launch pickles the logger with an empty list of known columns; when its metrics
    add columns, Lightning rewrites the file with only its own and fails on the old ones. Seeding the
    list with the file's header (here, before the launch) makes it rewrite with the union.
    """
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            writer = lg.experiment
            if os.path.isfile(writer.metrics_file_path):
                with open(writer.metrics_file_path, newline="") as f:
                    header = next(csv.reader(f), [])
                writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
