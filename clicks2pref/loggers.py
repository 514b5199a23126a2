"""Lightning loggers from the `logger` group, and a table helper that works for each of them."""
from __future__ import annotations

from typing import Any, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_loggers(cfg: DictConfig | dict) -> list:
    return [instantiate(spec) for spec in (cfg or {}).values() if spec is not None and "_target_" in spec]


def log_config(loggers: Sequence, cfg: DictConfig) -> None:
    params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    for lg in loggers:
        lg.log_hyperparams(params)


def log_metrics(loggers: Sequence, metrics: dict[str, float], step: int | None = None) -> None:
    for lg in loggers:
        lg.log_metrics(metrics, step=step)


def log_table(loggers: Sequence, key: str, rows: list[dict[str, Any]]) -> None:
    """A table as a W&B Table where the logger supports it, else one metric per numeric cell."""
    if not rows:
        return
    columns = list(rows[0])
    for lg in loggers:
        if hasattr(lg, "log_table"):
            lg.log_table(key=key, columns=columns, data=[[r[c] for c in columns] for r in rows])
        else:
            label = columns[0]
            lg.log_metrics({f"{key}/{r[label]}/{c}": float(r[c]) for r in rows for c in columns[1:]
                            if isinstance(r[c], (int, float))})


def finalize(loggers: Sequence, status: str = "success") -> None:
    for lg in loggers:
        lg.finalize(status)
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            # Lightning leaves the W&B run open; finishing writes its summary (and an offline run's
            # folder becomes complete for `wandb sync`) before the next job of a sweep starts its own
            lg.experiment.finish(exit_code=0 if status == "success" else 1)
