"""Lightning loggers from the `logger` group, and a table helper that works for each of them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_loggers(cfg: DictConfig | dict, task_name: str = "clicks2pref") -> list:
    loggers = []
    for spec in (cfg or {}).values():
        if spec is None or "_target_" not in spec:
            continue
        kwargs = {}
        if spec["_target_"].endswith("WandbLogger") and spec.get("group") is None:
            kwargs["group"] = run_group(task_name)
        if spec["_target_"].endswith("WandbLogger") and spec.get("name") is None:
            kwargs["name"] = run_name(task_name)
        loggers.append(instantiate(spec, **kwargs))
    return loggers


def run_group(task_name: str) -> str:
    """`<task>/<multirun folder>` for a sweep's jobs (one W&B group per sweep), else `<task>`."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}/{Path(HydraConfig.get().runtime.output_dir).parent.name}"
    return task_name


def run_name(task_name: str) -> str:
    """A sweep job's own overrides (`rewards=no_ppl`), so its W&B run is told apart from its siblings; else
    the task."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().job.override_dirname or f"{task_name}-{HydraConfig.get().job.num}"
    return task_name


def log_config(loggers: Sequence, cfg: DictConfig) -> None:
    params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in cfg.items() if k != "hydra"}
    for lg in loggers:
        lg.log_hyperparams(params)


def log_metrics(loggers: Sequence, metrics: dict[str, float], step: int | None = None) -> None:
    """Each distinct set of metrics once per logger: a stage reused by several later ones logs once."""
    for lg in loggers:
        sent = lg.__dict__.setdefault("_clicks2pref_sent", set())
        once = (step, tuple(sorted(metrics.items())))
        if once not in sent:
            sent.add(once)
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
