"""`stage=pipeline` end to end on the smoke logs with tiny models: every stage, the results table, the
evaluation report with the reward models' calibration on the GRPO policy's logs, a second run that
reuses every artifact, the calibration notebook on the run folder and a W&B offline run."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.conftest import compose_config
from tests.test_report import run_notebook

PIPELINE = ["experiment=smoke", "stage=pipeline"]


@pytest.fixture(scope="module")
def pipeline_run(smoke_collect, tmp_path_factory):
    from clicks2pref.__main__ import run_stage

    _, collected = smoke_collect
    out = tmp_path_factory.mktemp("pipeline")
    os.environ["WANDB_SILENT"] = "true"
    cfg = compose_config(PIPELINE + [f"data.logs={collected['logs']}", "logger=wandb", "logger.wandb.offline=true"],
                         out)
    return cfg, run_stage(cfg), out


def test_pipeline_runs_every_stage_and_prints_the_results_table(pipeline_run, capsys):
    cfg, result, out = pipeline_run
    assert set(result["seconds"]) == {"sft", "serve", "rm", "fusion", "grpo", "evaluate"}  # collect: data.logs given
    evaluation = json.loads((out / "evaluation.json").read_text())
    rows = {r["policy"]: r for r in evaluation["rows"]}
    assert set(rows) == {"baseline", "sft", "grpo", "sft+bo4", "canned", "ideal"} and evaluation["contexts"] == 3
    # the floor and the ceiling beside the policies: the canned panel is its own nearest template panel, and the
    # oracle's greedy panel of the world's questions is above it
    canned, ideal = rows["canned"], rows["ideal"]
    assert canned["canned_cosine"] == pytest.approx(1.0) and canned["format_rate"] == ideal["format_rate"] == 1.0
    assert ideal["oracle_ctr"] > canned["oracle_ctr"] and ideal["oracle_ctr"] > 0
    # nearness to the canned panel: a policy with no parseable suggestion (a random tiny model) has none
    assert all(math.isnan(c) or 0.0 <= c <= 1.0 + 1e-9
               for c in (rows[p]["canned_cosine"] for p in ("baseline", "sft", "grpo", "sft+bo4")))
    # best-of-4 among SFT's own 4 samples per context: never below the worst sample, never above the best
    (best,) = evaluation["best_of"]
    assert best["policy"] == "sft+bo4" and best["reward"] == "garm" and best["contexts"] <= 3
    assert rows["sft+bo4"]["oracle_ctr"] <= best["oracle_best"] + 1e-12
    base = rows["baseline"]  # the reference against itself
    assert base["gsb"] == 0.0 and base["diff_ci_low"] == base["diff_ci_high"] == 0.0
    assert all(0.0 <= r["ci_low"] <= r["oracle_ctr"] <= r["ci_high"] <= 1.0 for r in rows.values())
    assert (out / "ctr.png").stat().st_size > 0 and "| grpo |" in (out / "results.md").read_text()
    assert (out / "training.png").stat().st_size > 0  # reward, KL, entropy and the monitor over GRPO steps
    # the reward models' calibration on the IID week and on the GRPO policy's week of logs (OOD)
    calibration = json.loads((out / "calibration.json").read_text())
    assert set(calibration["kinds"]) == set(cfg.reward_model.kinds)
    splits = set(calibration["kinds"]["garm"]["splits"])
    if any("rl_week" in n for n in calibration["notes"]):
        assert {"iid", "ood"} <= splits
    else:  # the random tiny policy's week may hold no parseable panel: then no RL logs and no OOD split
        assert "iid" in splits and "ood" not in splits
        assert any("no OOD split" in n for n in calibration["notes"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval/grpo/oracle_ctr"] == rows["grpo"]["oracle_ctr"]


def test_wandb_offline_run_holds_the_logged_metrics(pipeline_run):
    _, _, out = pipeline_run
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()  # the run's record log, what `wandb sync` uploads
    for key in (b"eval/grpo/oracle_ctr", b"grpo/reward", b"sft/train_loss", b"rm/garm/iid_acc"):
        assert key in records


def test_second_run_reuses_every_artifact(pipeline_run, tmp_path, caplog):
    import logging

    from clicks2pref.__main__ import run_stage

    cfg, first, out = pipeline_run
    artifacts = Path(cfg.paths.artifacts_dir)
    before = {p: p.stat().st_mtime for p in artifacts.glob("*/*")}
    again = compose_config(PIPELINE + [f"data.logs={cfg.data.logs}", "logger=csv"], tmp_path)
    with open_dict(again):
        again.paths.root_dir = str(out)  # the first run's artifacts
    with caplog.at_level(logging.INFO):
        second = run_stage(again)
    messages = [r.getMessage() for r in caplog.records]
    reused = {m.split(":")[0] for m in messages if ": reusing " in m}
    assert {"sft", "rm", "fusion", "grpo"} <= reused
    # the policies' evaluations and the calibration report come from the cache: no model is run again
    assert not any("reference log-perplexity" in m for m in messages)
    assert {p: p.stat().st_mtime for p in artifacts.glob("*/*")} == before  # nothing new, nothing rewritten
    rows = lambda r: {x["policy"]: x["oracle_ctr"] for x in r["stages"]["evaluate"]["rows"]}  # noqa: E731
    assert rows(second) == rows(first)


def test_a_cached_run_says_one_line_per_stage_and_reuses_the_evaluation(pipeline_run, tmp_path, caplog, capsys):
    import logging

    from clicks2pref.__main__ import run_stage
    from clicks2pref.stages.pipeline import STAGES

    cfg, first, out = pipeline_run
    again = compose_config(PIPELINE + [f"data.logs={cfg.data.logs}", "logger=csv"], tmp_path)
    with open_dict(again):
        again.paths.root_dir = str(out)
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        second = run_stage(again)
    reused = [r.getMessage().split(":")[0] for r in caplog.records if ": reusing " in r.getMessage()]
    assert sorted(reused) == sorted(set(reused)) and set(STAGES) - {"collect"} <= set(reused)
    rows = lambda r: {x["policy"]: x["oracle_ctr"] for x in r["stages"]["evaluate"]["rows"]}  # noqa: E731
    assert rows(second) == rows(first)
    assert len(capsys.readouterr().out.splitlines()) <= 40


def test_a_ci_setting_reuses_the_evaluation_and_recomputes_only_the_intervals(pipeline_run, tmp_path, caplog):
    """Every CI, lift and GSB is computed from the stored per-context measurements: a narrower level reuses the
    evaluate artifact (no panel generated again) and gives intervals inside the 95 % ones around the same means."""
    import logging

    from clicks2pref.__main__ import run_stage

    cfg, first, out = pipeline_run
    again = compose_config(PIPELINE + [f"data.logs={cfg.data.logs}", "logger=csv", "eval.ci_level=0.5",
                                       "eval.gsb.margin=1.0"], tmp_path)
    with open_dict(again):
        again.paths.root_dir = str(out)
    artifacts = Path(cfg.paths.artifacts_dir)
    before = {p: p.stat().st_mtime for p in artifacts.glob("*/*")}
    with caplog.at_level(logging.INFO):
        second = run_stage(again)
    assert "evaluate" in {r.getMessage().split(":")[0] for r in caplog.records if ": reusing " in r.getMessage()}
    assert {p: p.stat().st_mtime for p in artifacts.glob("*/*")} == before
    wide = {r["policy"]: r for r in first["stages"]["evaluate"]["rows"]}
    narrow = {r["policy"]: r for r in second["stages"]["evaluate"]["rows"]}
    for name, r in narrow.items():
        assert r["oracle_ctr"] == wide[name]["oracle_ctr"]
        assert wide[name]["ci_low"] - 1e-12 <= r["ci_low"] <= r["ci_high"] <= wide[name]["ci_high"] + 1e-12
        assert r["gsb"] == 0.0  # no context differs by more than the margin
    assert second["stages"]["evaluate"]["ci"] == "50%"


def test_calibration_notebook_runs_on_the_pipeline_folder(pipeline_run):
    _, _, out = pipeline_run
    run_notebook("calibration.ipynb", {"RUN_DIR": str(out)})


def test_best_of_by_the_composite_reward_ranks_with_the_reward_grpo_trains_on(pipeline_run, tmp_path, caplog):
    import logging

    from clicks2pref.__main__ import run_stage

    cfg, _, out = pipeline_run
    again = compose_config(["experiment=smoke", "stage=evaluate", f"data.logs={cfg.data.logs}", "logger=csv",
                            "eval.policies=[sft]", "eval.reference=sft", "eval.calibration=false",
                            "eval.best_of.reward=composite"], tmp_path)
    with open_dict(again):
        again.paths.root_dir = str(out)  # the pipeline's artifacts: sft, rm and fusion are reused
    with caplog.at_level(logging.INFO):
        result = run_stage(again)
    (best,) = result["best_of"]
    assert best["reward"] == "composite" and best["oracle_ctr"] <= best["oracle_best"] + 1e-12
    fused = json.loads(next(Path(again.paths.artifacts_dir).glob("fusion/*/fusion_weights.json")).read_text())
    described = next(r.getMessage() for r in caplog.records if "best-of by the composite reward" in r.getMessage())
    assert all(f"{w:.3f}·{n}" in described for n, w in fused["weights"].items())  # fusion's weights, not equal ones
