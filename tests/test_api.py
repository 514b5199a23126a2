"""The Python API (`clicks2pref.compose`, `clicks2pref.run`), the metric a job returns, the Optuna search
config, and TRL's GRPO names accepted as aliases."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import clicks2pref
from clicks2pref.config import validate
from clicks2pref.errors import ConfigError

CONF = Path(clicks2pref.CONF_DIR)
HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
NO_OPTUNA = "hydra-optuna-sweeper is not installed (pip install -e '.[optuna]')"


def test_import_loads_neither_torch_nor_hydra():
    out = subprocess.run([sys.executable, "-c", "import sys, clicks2pref; "
                          "print(sorted(m for m in ('torch', 'transformers', 'hydra') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_compose_sets_the_run_folder_a_hydra_run_would(tmp_path):
    cfg = clicks2pref.compose(["experiment=smoke", "stage=collect", f"paths.root_dir={tmp_path}"])
    assert cfg.stage.name == "collect" and cfg.task_name == "collect" and "smoke" in cfg.tags
    assert cfg.paths.artifacts_dir == f"{tmp_path}/artifacts"
    assert cfg.paths.output_dir.startswith(f"{tmp_path}/logs/collect/runs/")
    assert HydraConfig.get().runtime.output_dir == cfg.paths.output_dir == cfg.hydra.runtime.output_dir

    other = clicks2pref.compose(["stage=sft"], output_dir=tmp_path / "other")
    assert other.paths.output_dir == str(tmp_path / "other") == HydraConfig.get().runtime.output_dir
    assert cfg.paths.output_dir.startswith(f"{tmp_path}/logs/collect/runs/")  # the first keeps its folder
    assert CONF == Path(__file__).resolve().parents[1] / "conf"  # a checkout reads its own conf/


def test_run_returns_the_stage_result_and_the_job_its_headline(smoke_collect, tmp_path):
    """`run` on a composed config: the smoke collect of the other tests, reused from its artifact, because
    `compose` gives the same config (and so the same cache key) as the tests' `compose_config`."""
    from clicks2pref.__main__ import headline

    collect_cfg, collected = smoke_collect
    root = collect_cfg.paths.root_dir
    cfg = clicks2pref.compose(["experiment=smoke", "stage=collect", "logger=csv", f"paths.root_dir={root}"])
    clicks2pref.compose(["stage=sft"], output_dir=tmp_path / "other")  # HydraConfig now names another run
    result = clicks2pref.run(cfg)
    assert result["key"] == collected["key"] and result["best_template"] in cfg.prompt
    assert sorted(Path(result["logs"]).parent.glob("week*.jsonl"))
    assert Path(cfg.paths.output_dir).is_dir() and not (tmp_path / "other").exists()
    best = next(t["sampled_ctr"] for t in result["templates"] if t["template"] == result["best_template"])
    assert headline(cfg, result) == best


def test_every_headline_is_a_validation_metric_and_a_path_picks_another():
    """A job returns what a team could measure (validation contexts, sampled clicks, its own logs), so a sweeper never
    climbs the oracle or the test contexts; the stages that only report have no headline."""
    from clicks2pref.__main__ import HEADLINE, headline

    assert set(HEADLINE) == {p.stem for p in (CONF / "stage").glob("*.yaml")} - {"sft", "serve", "evaluate"}
    assert all("oracle" not in path and "test" not in path and "eval." not in path for path in HEADLINE.values())
    grpo = {"eval": {"grpo": {"oracle_ctr": 0.31}, "lift": {"ctr_diff": -0.01}}, "rows": [{"x": 2}],
            "selected": {"step": 4, "sampled_ctr": 0.12}}
    cfg = OmegaConf.create({"stage": {"name": "grpo"}, "optimized_metric": None})
    assert headline(cfg, grpo) == 0.12
    cfg.optimized_metric = "eval.lift.ctr_diff"
    assert headline(cfg, grpo) == -0.01
    cfg.optimized_metric = "rows.-1.x"
    assert headline(cfg, grpo) == 2.0
    cfg.optimized_metric = "eval.sft.oracle_ctr"
    assert math.isnan(headline(cfg, grpo))
    assert math.isnan(headline(OmegaConf.create({"stage": {"name": "evaluate"}, "optimized_metric": None}), grpo))


VALIDATION_METRICS = ("selected.sampled_ctr", "stages.grpo.selected.sampled_ctr", "chosen.auc",
                      "metrics.garm.iid.accuracy", "metrics.btrm.iid.accuracy")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
                         + sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_search_and_sweep_preset_optimises_a_validation_metric(preset, tmp_path):
    group = "hparams_search" if (CONF / "hparams_search" / f"{preset}.yaml").exists() else "experiment"
    cfg = clicks2pref.compose([f"{group}={preset}"], output_dir=tmp_path)
    from clicks2pref.__main__ import HEADLINE

    metric = cfg.get("optimized_metric") or HEADLINE.get(cfg.stage.name)
    sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
    if "optuna" in sweeper or cfg.get("optimized_metric"):
        assert metric in VALIDATION_METRICS, (preset, metric)
    else:  # a grid sweep optimises nothing, but what each job returns is still never a test-set number
        assert metric is None or metric in VALIDATION_METRICS, (preset, metric)


@pytest.mark.skipif(not HAS_OPTUNA, reason=NO_OPTUNA)
def test_optuna_search_composes_and_names_existing_keys(tmp_path):
    cfg = clicks2pref.compose(["hparams_search=grpo_optuna"], output_dir=tmp_path)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and str(sweeper.direction).endswith("maximize")
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.stage.name == "grpo"
    assert cfg.optimized_metric == "selected.sampled_ctr"  # sampled clicks on validation contexts, not the oracle
    assert cfg.rewards.fit_kappa is False  # the searched κ is the one trained with
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.skipif(not HAS_OPTUNA, reason=NO_OPTUNA)
def test_optuna_sweeper_receives_the_jobs_metric(smoke_collect):
    """A one-trial study over the (reused) smoke collect: Optuna's best value is the job's return value."""
    collect_cfg, collected = smoke_collect
    out = subprocess.run([sys.executable, "-m", "clicks2pref", "hparams_search=grpo_optuna", "experiment=smoke",
                          "stage=collect", "optimized_metric=templates.0.oracle_ctr", "logger=csv",
                          "hydra.sweeper.n_trials=1", f"paths.root_dir={collect_cfg.paths.root_dir}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Best value: {collected['templates'][0]['oracle_ctr']}" in out.stdout + out.stderr


# --- TRL's names ---------------------------------------------------------------------------------------


def _validated(tmp_path, overrides):
    cfg = clicks2pref.compose(overrides, output_dir=tmp_path)
    return cfg, validate(cfg)


def test_trl_alias_sets_our_key_in_the_config_stages_read(tmp_path):
    cfg, typed = _validated(tmp_path, ["grpo.num_generations=8"])
    assert cfg.grpo.group_size == 8 and typed.grpo.group_size == 8
    assert cfg.grpo.num_generations is None and typed.grpo.num_generations is None
    same, _ = _validated(tmp_path, ["grpo.group_size=8"])
    assert OmegaConf.to_container(cfg.grpo) == OmegaConf.to_container(same.grpo)  # one artifact key


def test_every_trl_alias(tmp_path):
    cfg, _ = _validated(tmp_path, ["grpo.num_generations=8", "grpo.generation_batch_size=16", "grpo.num_iterations=2",
                                   "grpo.max_steps=24", "grpo.lr_scheduler_type=linear",
                                   "grpo.per_device_train_batch_size=2"])
    g = cfg.grpo
    assert (g.group_size, g.prompts_per_step, g.steps, g.lr_scheduler, g.micro_batch_size) == (8, 2, 12, "linear", 2)


def test_an_alias_replaces_a_presets_value(tmp_path):
    cfg, _ = _validated(tmp_path, ["experiment=smoke", "grpo.num_generations=8"])  # grpo=smoke has group_size 2
    assert cfg.grpo.group_size == 8


@pytest.mark.parametrize("overrides, alias, ours", [
    (["grpo.num_generations=8", "grpo.group_size=4"], "grpo.num_generations", "grpo.group_size"),
    (["grpo.max_steps=6", "grpo.steps=4"], "grpo.max_steps", "grpo.steps"),
    (["grpo.generation_batch_size=10"], "grpo.generation_batch_size", "grpo.group_size"),  # not a multiple of 4
])
def test_conflicting_or_indivisible_alias_names_both_keys(tmp_path, overrides, alias, ours):
    cfg = clicks2pref.compose(overrides, output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{alias}: ") and ours in str(err.value) and "\n" not in str(err.value)


def test_agreeing_alias_and_key_are_fine(tmp_path):
    cfg, _ = _validated(tmp_path, ["grpo.num_generations=8", "grpo.group_size=8"])
    assert cfg.grpo.group_size == 8


def test_a_given_kappa_that_fusion_would_replace_is_refused_by_name(tmp_path):
    cfg = clicks2pref.compose(["rewards.garm.kappa=2"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith("rewards.garm.kappa: ") and "rewards.fit_kappa=false" in str(err.value)
    for kept in (["rewards.garm.kappa=2", "rewards.fit_kappa=false"], ["rewards.garm.kappa=2", "rewards.weights=config"],
                 ["rewards.garm.kappa=2", "fusion.kappa_grid=[]"], ["rewards=mean_only"]):
        _validated(tmp_path, kept)


def test_schema_built_directly_takes_aliases():
    from clicks2pref.config.grpo import GRPOConfig, GRPOStageConfig

    assert GRPOStageConfig(num_generations=6, max_steps=5).group_size == 6
    assert GRPOStageConfig(max_steps=10, num_iterations=2).steps == 5
    with pytest.raises(ConfigError, match="group_size"):
        GRPOConfig(num_generations=6, group_size=3)
