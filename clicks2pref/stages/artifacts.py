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
