"""`python -m clicks2pref [group=option ...] [key=value ...]`: run the configured stage."""
from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from clicks2pref import CONF_DIR
from clicks2pref.config import register_configs, validate
from clicks2pref.console import quiet_third_party
from clicks2pref.errors import Clicks2PrefError
from clicks2pref.loggers import finalize, instantiate_loggers, log_config
from clicks2pref.models.placement import use_accelerator
from clicks2pref.stages.artifacts import SPECS, release_locks
from clicks2pref.stages.pipeline import run_stage as run_named_stage

log = logging.getLogger("clicks2pref")
register_configs()
# stage -> its headline metric (SPECS): the number a job returns, which a sweeper optimises
HEADLINE = {name: spec.headline for name, spec in SPECS.items() if spec.headline is not None}
SWEEP = {"jobs": 0, "failed": 0}  # this process's sweep jobs (the basic launcher runs them all here)

def run_stage(cfg: DictConfig):
    """The task wrapper: checks, seed, loggers, the stage; loggers are always closed, errors re-raised."""
    validate(cfg)  # every range check at start-up, before anything loads
    quiet_third_party()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    use_accelerator(cfg.trainer.accelerator)
    loggers = instantiate_loggers(cfg.logger, cfg.task_name)
    log_config(loggers, cfg)
    status = "failed"
    try:
        result = run_named_stage(cfg, cfg.stage.name, loggers)
        status = "success"
        return result
    finally:
        release_locks()  # a stage that failed leaves no artifact lock behind for the next one
        finalize(loggers, status)


def headline(cfg: DictConfig, result: dict) -> float:
    """The job's metric: `optimized_metric` or the stage's headline in SPECS, each a dotted path into `result` (list
    items by index); NaN when the result lacks it (e.g. `grpo.monitor.select=none`) or the stage has none."""
    path = cfg.get("optimized_metric") or HEADLINE.get(cfg.stage.name)
    try:
        value = result
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return float(value)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        log.warning("no metric %s in the %s result; the job returns NaN", path or "(the stage has no headline: set "
                    "optimized_metric)", cfg.stage.name)
        return math.nan


# an absolute path: the installed package's `clicks2pref/conf` or the checkout's `conf/` (see `CONF_DIR`)
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float:
    """One job: the stage's headline metric (its SPECS headline), or NaN for a sweep job that failed."""
    # the composed config is in the run folder (Hydra's .hydra/config.yaml); the console keeps to our milestones
    log.info("run folder %s (config in .hydra/config.yaml)", HydraConfig.get().runtime.output_dir)
    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    SWEEP["jobs"] += sweep_job
    try:
        return headline(cfg, run_stage(cfg))
    except Clicks2PrefError as e:  # the user's input: one clear line, no traceback
        log.error("%s", e, extra={"console": False})  # the log file; the terminal gets the one line below
        print(f"error: {e}", file=sys.stderr)
        if sweep_job:
            _record_failure(cfg, f"error: {e}\n")
            return math.nan
        sys.exit(1)
    except Exception:
        if not sweep_job:
            raise
        # one broken job must not stop a sweep: record it (the report lists it as failed) and go on
        log.exception("job failed; the sweep continues")
        _record_failure(cfg, traceback.format_exc())
        return math.nan


def _record_failure(cfg: DictConfig, text: str) -> None:
    SWEEP["failed"] += 1
    (Path(cfg.paths.output_dir) / "error.txt").write_text(text)


def main():
    """Run the job or sweep; a sweep in which some job failed exits with status 1 once every job has run."""
    _main()
    if SWEEP["failed"]:
        print(f"error: {SWEEP['failed']} of {SWEEP['jobs']} sweep jobs failed (error.txt in each failed job's "
              f"folder)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
