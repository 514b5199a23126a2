"""`python -m clicks2pref [group=option ...] [key=value ...]`: run the configured stage."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from clicks2pref.config import register_configs, validate
from clicks2pref.errors import Clicks2PrefError
from clicks2pref.loggers import finalize, instantiate_loggers, log_config
from clicks2pref.models.placement import use_accelerator

log = logging.getLogger("clicks2pref")
register_configs()


def run_stage(cfg: DictConfig):
    """The task wrapper: checks, seed, loggers, the stage; loggers are always closed, errors re-raised."""
    validate(cfg)  # every range check at start-up, before anything loads
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    use_accelerator(cfg.trainer.accelerator)
    loggers = instantiate_loggers(cfg.logger, cfg.task_name)
    log_config(loggers, cfg)
    status = "failed"
    try:
        result = get_method(cfg.stage._target_)(cfg, loggers)
        status = "success"
        return result
    finally:
        finalize(loggers, status)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig):
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=False))
    sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run_stage(cfg)
    except Clicks2PrefError as e:  # the user's input: one clear line, no traceback
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        if sweep_job:
            _record_failure(cfg, f"error: {e}\n")
            return
        sys.exit(1)
    except Exception:
        if not sweep_job:
            raise
        # one broken job must not stop a sweep: record it (the report lists it as failed) and go on
        log.exception("job failed; the sweep continues")
        _record_failure(cfg, traceback.format_exc())


def _record_failure(cfg: DictConfig, text: str) -> None:
    (Path(cfg.paths.output_dir) / "error.txt").write_text(text)


def main():
    _main()


if __name__ == "__main__":
    main()
