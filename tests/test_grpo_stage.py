"""`stage=grpo` end to end on the smoke logs with tiny models (SFT, GaRM/BTRM, fusion, GRPO, evaluation, RL logs),
and the Table 4 multirun at smoke sizes (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_config

# fixtures that train policies and reward models, and sweeps that run them several times: minutes each on
# 2 cores, so `make test-full` runs them (tests/test_pipeline.py covers every stage in the default run)
pytestmark = pytest.mark.slow

# tiny models everywhere, lexical similarity, few steps: the real code paths in about a minute
SMOKE_GRPO = ["experiment=smoke", "stage=grpo"]


@pytest.fixture(scope="module")
def grpo_run(smoke_collect, tmp_path_factory):
    from clicks2pref.__main__ import run_stage

    _, collected = smoke_collect
    out = tmp_path_factory.mktemp("grpo_stage")
    cfg = compose_config(SMOKE_GRPO + [f"data.logs={collected['logs']}"], out)
    start = time.time()
    result = run_stage(cfg)
    return cfg, result, out, time.time() - start


def test_stage_trains_evaluates_and_writes_everything(grpo_run):
    from clicks2pref.data.io import load_impressions

    cfg, result, out, seconds = grpo_run
    final = Path(result["path"])
    assert final == Path(cfg.paths.artifacts_dir) / "grpo" / result["key"]
    assert (final / "policy" / "adapter_model.safetensors").exists()
    assert set(result["weights"]) == {"garm", "external", "rule", "ppl", "diversity"}
    assert sum(result["weights"].values()) == pytest.approx(1.0) and result["tau"] is not None
    ev = result["eval"]
    for policy in ("grpo", "sft"):
        m = ev[policy]
        assert m["ci_low"] <= m["oracle_ctr"] <= m["ci_high"] and 0 <= m["format_rate"] <= 1
    g = ev["gsb"]
    assert g["good"] + g["same"] + g["bad"] == ev["contexts"] == cfg.grpo.eval.max_contexts
    assert result["optimizer_steps"] == cfg.grpo.steps
    # monitor: before the first step, every step, after the last
    assert [h["step"] for h in result["monitor"]["history"]] == [0, 1, 2]
    # RL logs: valid impressions from the GRPO policy, the OOD split for stage=rm
    # (the tiny random policy rarely shows a panel: an empty week writes no file; the flywheel test logs a real one)
    if result["rl_logs"] is not None:
        rl = load_impressions(result["rl_logs"])
        assert rl and {r["policy"] for r in rl} == {"grpo"} and {r["week"] for r in rl} == {4}
    # fusion ran first and wrote its weights with the front it searched
    fusion = json.loads((Path(cfg.paths.artifacts_dir) / "fusion" / result["inputs"]["fusion"] /
                         "fusion_weights.json").read_text())
    assert fusion["weights"] == result["weights"] and fusion["front"] and fusion["tau"] == result["tau"]
    # ... on the SFT policy's own week, but the tiny random policy shows no panel: fusion fits on the logs instead
    assert fusion["data"]["logs"] == "clicks" and fusion["data"]["weeks"] == list(cfg.fusion.weeks)
    assert fusion["kappa"] in cfg.fusion.kappa_grid and len(fusion["kappa_auc"]) == len(cfg.fusion.kappa_grid)
    # reports and metrics
    assert (out / "grpo.md").read_text().startswith("GRPO (full")
    assert len((out / "completions.jsonl").read_text().splitlines()) == cfg.grpo.steps * cfg.grpo.group_size
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in ("grpo/reward", "grpo/kl", "grpo/clip_ratio", "grpo/entropy", "grpo/completion_len",
                 "grpo/frac_zero_std", "grpo/rewards/garm/mean", "grpo/rewards/ppl/mean",
                 "grpo/monitor/oracle_ctr", "grpo/eval/gsb"):
        assert name in header, name
    assert not list(final.parent.glob(f".work-{result['key']}*"))


def test_spawned_processes_are_refused_with_one_clear_error(grpo_run):
    """The stage's reward and oracle monitor do not pickle into spawned workers: one error naming `trainer`,
    before any training (GRPOModule under DDP: tests/test_grpo_ddp.py)."""
    from clicks2pref.__main__ import run_stage
    from clicks2pref.errors import ConfigError

    cfg, _, out, _ = grpo_run
    ddp = compose_config(SMOKE_GRPO + [f"data.logs={cfg.data.logs}", "trainer=ddp_cpu", "grpo.steps=3",
                                       f"paths.artifacts_dir={cfg.paths.artifacts_dir}"], out / "ddp")
    with pytest.raises(ConfigError, match="trainer.*spawned processes"):
        run_stage(ddp)


def test_second_run_reuses_the_artifact(grpo_run, tmp_path):
    from clicks2pref.__main__ import run_stage

    cfg, result, _, seconds = grpo_run
    again = compose_config(SMOKE_GRPO + [f"data.logs={cfg.data.logs}",
                                         f"paths.artifacts_dir={cfg.paths.artifacts_dir}", "logger=[]"], tmp_path)
    start = time.time()
    assert run_stage(again)["key"] == result["key"]
    assert time.time() - start < seconds / 2
    assert (tmp_path / "grpo.json").exists()


def test_config_errors_name_the_key(smoke_collect, tmp_path):
    from clicks2pref.__main__ import run_stage
    from clicks2pref.errors import ConfigError

    _, collected = smoke_collect
    cfg = compose_config(SMOKE_GRPO + [f"data.logs={collected['logs']}", "reward_model.kinds=[garm]",
                                       "logger=[]"], tmp_path)
    with pytest.raises(ConfigError, match="reward_model.kinds"):
        run_stage(cfg)  # the external term defaults to the trained BTRM: caught before anything trains
    cfg = compose_config(SMOKE_GRPO + ["grpo.loss_type=ppo", "logger=[]"], tmp_path)
    with pytest.raises(ConfigError, match="grpo.loss_type"):
        run_stage(cfg)


@pytest.mark.slow
def test_table4_multirun_at_smoke_size(smoke_collect, tmp_path):
    from clicks2pref.report import summary_row

    _, collected = smoke_collect
    cmd = [sys.executable, "-m", "clicks2pref", "-m", "experiment=[smoke,table4]", "grpo.rl_logs.enabled=false",
           f"data.logs={collected['logs']}", f"paths.root_dir={tmp_path}", "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/grpo.json"))]
    assert sorted(r["rewards"] for r in results) == sorted(
        ["full", "no_ppl", "no_rule", "no_diversity", "no_external", "btrm_instead_of_garm", "mean_only", "no_fusion"])
    # one SFT policy and one pair of reward models for all eight jobs
    assert len({r["inputs"]["sft"] for r in results}) == 1 and len({r["inputs"]["rm"] for r in results}) == 1
    by_name = {r["rewards"]: r for r in results}
    assert "ppl" not in by_name["no_ppl"]["weights"] and "btrm" in by_name["btrm_instead_of_garm"]["weights"]
    assert set(by_name["no_fusion"]["weights"].values()) == {0.2}
    rows = [summary_row(r) for r in results]
    assert all(0 <= row["oracle_ctr"] <= 1 and -100 <= row["gsb"] <= 100 for row in rows)
    # the sweep report and the ablations notebook on this sweep's folders
    from clicks2pref.report import job_rows, main as report_main
    from tests.test_report import run_notebook

    assert report_main([str(tmp_path / "sweep")]) == 0
    assert len((tmp_path / "sweep" / "table4.md").read_text().splitlines()) == 2 + 8
    assert [r["status"] for r in job_rows(tmp_path / "sweep")] == ["ok"] * 8
    run_notebook("ablations.ipynb", {"SWEEP_DIR": str(tmp_path / "sweep")})
