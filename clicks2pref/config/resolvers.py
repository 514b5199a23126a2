"""The resolvers the config tree uses: `${c2p.pid:}` (run folders) and `${c2p.interactive:}` (progress bars)."""
from __future__ import annotations

import os
import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf


def interactive() -> bool:
    """Progress bars only for a person at a terminal: not in pipes, CI logs or a sweep's jobs."""
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return sys.stderr.isatty() and not sweep


def register_resolvers() -> None:
    # the process id, so two runs started in the same second get their own run folders
    OmegaConf.register_new_resolver("c2p.pid", os.getpid, replace=True)
    # progress bars for a person at a terminal only (trainer.enable_progress_bar)
    OmegaConf.register_new_resolver("c2p.interactive", interactive, replace=True)
