"""Stage outputs under `<artifacts_dir>/<stage>/<key>/`, keyed by the config that produced them.

A folder is written under a temporary name and renamed when complete, so a killed run never leaves
an artifact that a later run would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

# The config subtrees each stage's output depends on (a stage's own inputs' keys are folded in).
STAGE_INPUTS = {
    "collect": ("seed", "simulator", "prompt", "policy", "collect", "data.split", "data.format"),
    # rm: its own settings, the logs it reads (collect's inputs when data.logs is null), the reference
    # policy of the perplexity deciles, and the Trainer keys that change what is trained
    "rm": ("seed", "simulator", "prompt", "policy", "collect", "data", "reward_model", "trainer.max_steps",
           "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.accumulate_grad_batches",
           "trainer.gradient_clip_val", "trainer.precision", "trainer.fast_dev_run", "trainer.overfit_batches"),
    # sft and its teacher: their settings and the Trainer keys that change what is trained; the click
    # logs they read (collect's key, or a hash of the files) are folded in by `stages.sft.keyed`
    "sft": ("seed", "simulator", "prompt", "policy", "sft", "teacher", "data.on_invalid", "data.split",
            "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.precision",
            "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.fast_dev_run",
            "trainer.overfit_batches"),
    "teacher": ("seed", "teacher", "sft.data", "policy.generation.batch_size", "data.on_invalid",
                "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.precision",
                "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.fast_dev_run",
                "trainer.overfit_batches"),
    # fusion: the enabled reward components (not how weights are chosen), its own settings, how candidates
    # are sampled; the sft and rm keys and the click logs are folded in by `stages.fusion.fusion_key`
    "fusion": ("seed", "rewards.examination", "rewards.embedder", "rewards.garm", "rewards.btrm", "rewards.external",
               "rewards.rule", "rewards.ppl", "rewards.diversity", "fusion", "simulator.examination",
               "grpo.temperature", "grpo.top_p", "grpo.top_k", "grpo.max_completion_length", "grpo.micro_batch_size",
               "policy.generation.batch_size", "data.on_invalid"),
    # grpo: everything it trains and evaluates with; sft, rm and fusion keys and the logs are folded in by
    # `stages.grpo.grpo_key`
    "grpo": ("seed", "rewards", "grpo", "simulator", "policy", "prompt", "data.on_invalid", "data.split",
             "data.format", "collect.sessions_per_week", "collect.users_per_panel", "trainer.precision",
             "trainer.accelerator"),
}


def stage_key(cfg, stage: str) -> str:
    """Short hash of the resolved config subtrees that determine `stage`'s output."""
    parts = {name: OmegaConf.to_container(OmegaConf.select(cfg, name), resolve=True)
             if OmegaConf.is_config(OmegaConf.select(cfg, name)) else OmegaConf.select(cfg, name)
             for name in STAGE_INPUTS[stage]}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def artifact_path(cfg, stage: str, key: str) -> Path:
    return Path(cfg.paths.artifacts_dir) / stage / key


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; rename it to `final` only if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
