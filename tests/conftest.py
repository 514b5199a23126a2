"""Fixtures that compose the real `conf/` and shrink it for tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from clicks2pref.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
register_configs()


def compose_config(overrides: list[str], output_dir: Path):
    """The real config with overrides, hydra's runtime folder pointed at `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)  # not read through the global HydraConfig a later test replaces
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def cfg_smoke(tmp_path):
    return compose_config(["experiment=smoke", "stage=collect"], tmp_path)


@pytest.fixture(scope="session")
def world():
    from clicks2pref.data.simulator import load_world

    return load_world()


@pytest.fixture(scope="session")
def minilm_simulator():
    """The default simulator (MiniLM similarity), built once."""
    from clicks2pref.config.simulator import SimulatorConfig
    from clicks2pref.data.simulator import build_simulator
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config")
    sim_cfg = OmegaConf.to_object(cfg.simulator)
    assert isinstance(sim_cfg, SimulatorConfig)
    return build_simulator(sim_cfg)


@pytest.fixture(scope="session")
def smoke_collect(tmp_path_factory):
    """Click logs from a real `collect` run at smoke sizes (SmolLM2 + lexical simulator), made once.

    Returns (cfg, result): result["logs"] is the glob of the four weeks of logs.
    """
    from clicks2pref.__main__ import run_stage

    out = tmp_path_factory.mktemp("smoke_collect")
    cfg = compose_config(["experiment=smoke", "stage=collect", "logger=csv"], out)
    return cfg, run_stage(cfg)


def nan_gradient_on_call(param, *calls: int) -> list:
    """Make `param`'s gradient NaN on the listed backward calls (1-based); returns the list of calls seen."""
    import torch

    seen = []

    def hook(grad):
        seen.append(len(seen) + 1)
        return torch.full_like(grad, float("nan")) if len(seen) in calls else grad

    param.register_hook(hook)
    return seen
