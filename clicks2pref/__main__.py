"""`python -m clicks2pref [group=option ...] [key=value ...]`: run the configured stage."""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from clicks2pref.config import register_configs
from clicks2pref.errors import Clicks2PrefError

log = logging.getLogger("clicks2pref")
register_configs()


def run_stage(cfg: DictConfig):
    """The task wrapper: seed, loggers, the stage; loggers are always closed, errors re-raised."""
    import pytorch_lightning as pl

    from clicks2pref.loggers import finalize, instantiate_loggers, log_config

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    loggers = instantiate_loggers(cfg.logger)
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
    try:
        run_stage(cfg)
    except Clicks2PrefError as e:  # the user's input: one clear line, no traceback
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def main():
    _main()


if __name__ == "__main__":
    main()
