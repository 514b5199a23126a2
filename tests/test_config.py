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
    (conf / "simulator" / "v1.yaml").write_text((conf / "simulator" / "v1.yaml").read_text()
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


def test_every_yaml_default_is_its_dataclass_default(tmp_path):
    """The composed default config and the schema's own defaults are one set of values.

    Maps whose entries a YAML chooses (simulator.segments, like the prompt group) stay empty in the schema:
    a schema default would be merged into every YAML's own choice of entries."""
    from omegaconf import OmegaConf, open_dict

    from clicks2pref.config import Config, validate

    cfg = compose_config([], tmp_path)
    typed = validate(cfg)
    assert set(cfg.simulator.segments) == {"practical", "budget", "cautious", "curious"}
    with open_dict(cfg):
        cfg.simulator.segments = {}
    schema = OmegaConf.structured(Config)
    for group in ("data", "simulator", "policy", "collect", "sft", "teacher", "reward_model", "rewards", "fusion",
                  "grpo", "eval", "stage", "seed", "cache"):
        composed = OmegaConf.to_container(cfg[group], resolve=True) if OmegaConf.is_config(cfg[group]) else cfg[group]
        default = OmegaConf.to_container(schema[group], resolve=True) if OmegaConf.is_config(
            schema[group]) else schema[group]
        assert composed == default, group
    assert typed.grpo.temperature == 0.8 and typed.grpo.log_completions_every == 4


BAD_VALUES = [
    ("grpo.learning_rate=0", "grpo.learning_rate"),
    ("sft.train.optimizer.lr=-1e-3", "sft.train.optimizer.lr"),
    ("teacher.train.optimizer.lr=0", "teacher.train.optimizer.lr"),
    ("reward_model.optim.lr=0", "reward_model.optim.lr"),
    ("reward_model.optim.head_lr=-1", "reward_model.optim.head_lr"),
    ("sft.train.batch_size=0", "sft.train.batch_size"),
    ("teacher.train.batch_size=-4", "teacher.train.batch_size"),
    ("policy.generation.batch_size=0", "policy.generation.batch_size"),
    ("reward_model.optim.groups_per_batch=0", "reward_model.optim.groups_per_batch"),
    ("grpo.micro_batch_size=0", "grpo.micro_batch_size"),
    ("grpo.prompts_per_step=0", "grpo.prompts_per_step"),
    ("sft.train.max_steps=-1", "sft.train.max_steps"),
    ("teacher.train.max_steps=0", "teacher.train.max_steps"),
    ("grpo.steps=0", "grpo.steps"),
    ("reward_model.loss.variance_reg.lambda=-0.1", "reward_model.loss.variance_reg.lambda"),
    ("reward_model.head.sigma_min=0", "reward_model.head.sigma_min"),
    ("data.on_invalid=ignore", "data.on_invalid"),
    ("grpo.group_size=1", "grpo.group_size"),
    ("grpo.num_iterations=0", "grpo.num_iterations"),
    ("grpo.temperature=0", "grpo.temperature"),
    ("grpo.top_p=1.5", "grpo.top_p"),
    ("grpo.beta=-0.04", "grpo.beta"),
    ("grpo.epsilon=-0.2", "grpo.epsilon"),
    ("grpo.loss_type=ppo", "grpo.loss_type"),
    ("grpo.eval.split=train", "grpo.eval.split"),
    ("grpo.monitor.patience=0", "grpo.monitor.patience"),
    ("collect.weeks=0", "collect.weeks"),
    ("rewards.weights=learned", "rewards.weights"),
    ("reward_model.kinds=[garm,crm]", "reward_model.kinds"),
    ("eval.reference=sft", "eval.reference"),  # not among eval.policies below
    ("data.split.test_fraction=1.0", "data.split.test_fraction"),
]


@pytest.mark.parametrize("override, key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_fail_at_start_up_naming_the_key(tmp_path, override, key):
    from clicks2pref.config import validate
    from clicks2pref.errors import ConfigError

    extra = ["eval.policies=[baseline,grpo]", "eval.reference=sft"] if key == "eval.reference" else [override]
    cfg = compose_config(extra, tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


def test_cli_bad_value_is_one_line_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "clicks2pref", "sft.train.max_steps=-1", f"paths.root_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: sft.train.max_steps: -1 must be at least 1"
    assert not (tmp_path / "artifacts").exists()  # nothing ran


def test_a_sweep_with_failed_jobs_runs_them_all_and_exits_1(tmp_path):
    out = subprocess.run([sys.executable, "-m", "clicks2pref", "-m", "sft.train.max_steps=-1,-2",
                          f"paths.root_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "error: sft.train.max_steps: -2 must be at least 1" in out.stderr  # the second job ran too
    assert out.stderr.strip().splitlines()[-1].startswith("error: 2 of 2 sweep jobs failed")
    assert len(list((tmp_path / "logs").rglob("error.txt"))) == 2
