"""clicks2pref: align generative query-suggestion models with user clicks.

From Python (a notebook) instead of the command line::

    cfg = clicks2pref.compose(["experiment=smoke", "stage=collect"])
    result = clicks2pref.run(cfg)   # the stage's result dict
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

if TYPE_CHECKING:
    from omegaconf import DictConfig

__version__ = "0.1.0"


def _conf_dir() -> Path:
    """The Hydra configs: `clicks2pref/conf` in an installed wheel, the checkout's top-level `conf/` otherwise."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if (packaged / "config.yaml").is_file() else packaged.parents[1] / "conf"


CONF_DIR = str(_conf_dir())

# `import clicks2pref` stays cheap (a notebook's first cell, `clicks2pref-validate`): the schema and the stages
# load torch and transformers, so `compose` and `run` import them when called, the one place this package
# imports lazily on purpose.


def compose(overrides: Sequence[str] = (), output_dir: Optional[Union[str, Path]] = None) -> "DictConfig":
    """The config `python -m clicks2pref <overrides>` would run, composed without a Hydra run.

    The run folder (`output_dir`; by default `hydra.run.dir`, `logs/<task>/runs/<time>...` under
    `paths.root_dir`) is set where a Hydra run sets it: `hydra.runtime.output_dir`, `paths.output_dir` and the
    current `HydraConfig`. The result holds the `hydra` node, as Hydra's `return_hydra_config`.
    """
    from clicks2pref.config import compose_job

    return compose_job(CONF_DIR, overrides, None if output_dir is None else str(output_dir))


def run(cfg: "DictConfig") -> dict:
    """Run `cfg`'s stage (`stage=...`) as the command line does and return the stage's result dict."""
    from hydra.core.hydra_config import HydraConfig

    from clicks2pref.__main__ import run_stage

    if "hydra" in cfg:
        HydraConfig().set_config(cfg)  # this config's run, even when another was composed since
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    return run_stage(cfg)
