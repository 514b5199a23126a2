"""The real config composes, and mistakes in it fail before anything loads."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import compose_config


def test_default_config_composes_with_every_group(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.stage.name == "pipeline" and cfg.policy.model.name == "smollm2-135m-instruct"
    assert set(cfg.prompt) == {"concise", "engaging", "fewshot"}
    assert list(cfg.simulator.examination) == [0.9, 0.6, 0.4]
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_prompt_subset_and_experiment_override(tmp_path):
    cfg = compose_config(["prompt=[engaging]", "experiment=smoke"], tmp_path)
    assert list(cfg.prompt) == ["engaging"]
    assert cfg.simulator.similarity == "lexical" and "smoke" in cfg.tags


@pytest.mark.parametrize("override, error", [
    ("simulatr.alpha=3", ConfigCompositionException),        # misspelled group key
    ("simulator.alpah=3", ConfigCompositionException),       # misspelled field
    ("simulator.alpha=steep", ConfigCompositionException),   # wrong type
    ("collect.weeks=2.5", ConfigCompositionException),       # float for an int
    ("policy=no_such_policy", ConfigCompositionException),   # missing option
])
def test_typos_and_wrong_types_fail_at_composition(tmp_path, override, error):
    with pytest.raises(error):
        compose_config([override], tmp_path)


def test_cli_typo_fails_fast_with_hydras_message():
    out = subprocess.run([sys.executable, "-m", "clicks2pref", "simulator.alpah=3"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "alpah" in out.stderr and "SimulatorConfig" in out.stderr
    assert "Loading" not in out.stderr  # nothing was loaded


def test_group_file_with_unknown_key_fails(tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "simulator" / "default.yaml").write_text((conf / "simulator" / "default.yaml").read_text()
                                                     + "examinaton: [1.0]\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError), match="examinaton"):
            compose("config")


@pytest.mark.parametrize("experiment", ["smoke", "table3", "table4", "lambda_sweep", "rm_compare", "paper_scale"])
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    assert experiment in cfg.tags


def test_paper_scale_points_every_model_at_the_hub_on_gpus(tmp_path):
    cfg = compose_config(["experiment=paper_scale"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.policy.model.name.startswith("Qwen/") and cfg.teacher.model.name == "Qwen/Qwen3-32B"
    assert cfg.reward_model.backbone.name == "Qwen/Qwen3-8B" and cfg.sft.method == "qlora"
