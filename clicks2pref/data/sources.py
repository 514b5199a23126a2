"""Where a stage's click logs come from: the user's files, or this config's `collect` output."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clicks2pref.errors import ClickLogError


@dataclass
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0


@dataclass
class DataConfig:
    logs: Optional[str] = None
    ood_logs: Optional[str] = None
    on_invalid: str = "error"  # error | skip
    format: str = "jsonl"  # jsonl | parquet
    split: SplitConfig = field(default_factory=SplitConfig)


def click_log_source(cfg) -> str:
    """`data.logs` if set, else the logs the `collect` stage wrote for this configuration."""
    if cfg.data.logs:
        return cfg.data.logs
    from clicks2pref.stages.artifacts import artifact_path, stage_key

    folder = artifact_path(cfg, "collect", stage_key(cfg, "collect"))
    if not Path(folder).exists():
        raise ClickLogError(f"no click logs: set data.logs=PATH_OR_GLOB, or run `python -m clicks2pref "
                            f"stage=collect` with the same config first (expected {folder})", field="data.logs")
    return str(Path(folder) / f"week*.{cfg.data.format}")
