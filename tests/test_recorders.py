"""The experiment recorders: each reads a run folder with the files its stages write and writes its tables; before
any run each writes its tables with cells that read "not yet measured" and the commands that make and record it."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import clicks2pref

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
RECORDERS = {"default_run": "from_run.py", "population_b": "from_run.py", "rl_scale": "from_run.py",
             "table3": "from_runs.py", "rm_compare": "from_runs.py", "lambda_sweep": "from_runs.py",
             "flywheel": "from_run.py", "paper_scale": "from_run.py"}


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = load(EXPERIMENTS / "tables.py", "experiment_tables_for_recorders")
NOT_MEASURED = tables.NOT_MEASURED


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """recorder(folder) -> its module, writing into tmp_path/experiments/<folder>/results.json."""
    def get(folder: str):
        module = load(EXPERIMENTS / folder / RECORDERS[folder], f"recorder_{folder}")
        out = tmp_path / "experiments" / folder
        out.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(module, "HERE", out)
        return module
    return get


def write(folder: Path, name: str, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data, indent=2))


def hydra_files(folder: Path, overrides: list[str]) -> None:
    """`.hydra/config.yaml` and `overrides.yaml` as a run writes them: the composed config, the command's overrides."""
    cfg = clicks2pref.compose(overrides)
    with_hydra = OmegaConf.to_container(cfg)
    with_hydra.pop("hydra")
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(with_hydra)))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))


def measured(value: float, spread: float = 0.01) -> dict:
    return {"oracle_ctr": value, "ci_low": value - spread, "ci_high": value + spread}


def evaluation(n: int, shifts: dict, seed: int = 0) -> dict:
    """evaluation.json as stage evaluate writes it: every policy's row against the baseline, best-of-16 by the
    composite reward, the canned and ideal rows, and each policy's per-context CTR."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.05, 0.15, n)
    per_context = {name: base + shift + rng.normal(0, 0.002, n) for name, shift in shifts.items()}
    rows = []
    for name, ctr in per_context.items():
        diff = ctr - per_context["baseline"]
        rows.append({"policy": name, **measured(float(ctr.mean())), "lift": float(diff.mean() / base.mean()),
                     "diff_ci_low": float(diff.mean()) - 0.003, "diff_ci_high": float(diff.mean()) + 0.003,
                     "gsb": 40.0, "format_rate": 1.0, "distinct_2": 0.4, "mean_cosine": 0.6,
                     "canned_cosine": 1.0 if name == "canned" else 0.45 + 0.01 * len(name)})
    best = {"policy": "sft+bo16", "reward": "composite", "oracle_ctr": float(per_context["sft+bo16"].mean()),
            "vs_policy": 0.02, "vs_ci_low": 0.015, "vs_ci_high": 0.025, "reward_spearman": 0.41, "oracle_best": 0.5,
            "contexts": n}
    return {"policies": {}, "split": "test", "contexts": n, "samples_per_context": 16, "reference": "baseline",
            "ci": "95%", "rows": rows, "best_of": [best], "examples": [],
            "per_context_ctr": {k: [float(x) for x in v] for k, v in per_context.items()}, "seconds": 12.0}


def grpo_json(path: Path, samples: int = 192, kept: int = 8, lift: float = 0.01) -> dict:
    """grpo.json as stage grpo writes it (the fields the recorders read)."""
    steps = [0, 4, 8, 12]
    return {"key": "g1", "rewards": "full", "policy_samples": samples, "steps": 12, "train_seconds": 300.0,
            "seconds": 400.0, "path": str(path), "inputs": {"sft": "s1", "rm": "r1", "fusion": "f1"},
            "eval": {"split": "test", "contexts": 20, "ci": "95%",
                     "sft": {**measured(0.10), "format_rate": 1.0, "distinct_2": 0.45, "mean_pairwise_cosine": 0.62},
                     "grpo": {**measured(0.10 + lift), "format_rate": 1.0, "distinct_2": 0.41,
                              "mean_pairwise_cosine": 0.6},
                     "lift": {"ctr_diff": lift, "ci_low": lift - 0.004, "ci_high": lift + 0.004, "relative": lift / 0.1},
                     "gsb": {"good": 9, "same": 8, "bad": 3, "gsb": 30.0}},
            "monitor": {"flagged": False, "flagged_at": [],
                        "history": [{"step": s, "proxy": 0.2 + 0.01 * s, "oracle_ctr": 0.1 + 0.001 * s} for s in steps]},
            "selected": {"step": kept, "sampled_ctr": 0.3, "oracle_ctr": 0.108,
                         "evaluations": [{"step": s, "sampled_ctr": 0.3 if s == kept else 0.2,
                                          "oracle_ctr": 0.1 + 0.001 * s} for s in steps]}}


def rm_json() -> dict:
    split = lambda rho: {"n_pairs": 300, "accuracy": 0.64, "ece": 0.05, "sigma_mean": 0.7,  # noqa: E731
                         "oracle_spearman": rho, "oracle_within_panel": 0.6}
    return {"key": "r1", "metrics": {"garm": {"iid": split(0.55)}, "btrm": {"iid": split(0.5)}},
            "examination": {"garm": [1.0, 0.62, 0.35], "btrm": [1.0, 0.6, 0.33]},
            "train_seconds": {"garm": 500.0, "btrm": 450.0}, "seconds": 1000.0}


def pipeline_run(tmp_path: Path, overrides: list[str], n: int = 20) -> Path:
    """A pipeline run folder and the artifacts its grpo.json names."""
    run = tmp_path / "logs" / "pipeline" / "runs" / "2026-12-07_10-00-00_4242"
    hydra_files(run, overrides)
    shifts = {"baseline": 0.0, "sft": 0.03, "grpo": 0.04, "sft+bo16": 0.05, "canned": 0.01, "ideal": 0.3}
    write(run, "evaluation.json", evaluation(n, shifts))
    write(run, "grpo.json", grpo_json(tmp_path / "artifacts" / "grpo" / "g1"))
    write(run, "fusion_weights.json", {"key": "f1", "weights": {"garm": 0.2, "external": 0.7, "rule": 0.1},
                                       "kappa": 0.5, "seconds": 60.0})
    write(tmp_path / "artifacts" / "rm" / "r1", "rm.json", rm_json())
    return run


def rendered(results: dict, name: str) -> str:
    return tables.render_table(results["tables"][name], results["values"], results["runs"])


def test_the_v1_default_run_becomes_its_tables_and_the_claims_v1_values(recorder, tmp_path):
    module = recorder("default_run")
    v1 = list(module.record.V1)
    run = pipeline_run(tmp_path, v1)
    results = module.main([str(run), "abc1234"])
    info = results["runs"]["v1_default"]
    assert info["date"] == "2026-12-07" and info["commit"] == "abc1234"
    assert info["command"] == "python -m clicks2pref " + " ".join(v1)
    ev = json.loads((run / "evaluation.json").read_text())
    per = {k: np.asarray(v) for k, v in ev["per_context_ctr"].items()}
    rows = {r[0]: r for r in results["tables"]["results"]["rows"]}
    assert list(rows) == ["prompted baseline", "SFT", "GRPO (192 samples)", "SFT, best of 16 by the composite reward",
                          "canned panel (floor, no model)", "ideal panel (upper bound)"]
    assert rows["prompted baseline"][2] is None
    assert rows["SFT"][2]["v"] == pytest.approx(per["sft"].mean() - per["baseline"].mean())
    values = results["values"]
    grpo = values["grpo_minus_sft"]  # re-resampled from the per-context CTRs: the paired mean and a CI around it
    assert grpo["v"] == pytest.approx((per["grpo"] - per["sft"]).mean())
    assert grpo["ci"][0] < grpo["v"] < grpo["ci"][1] and grpo["ci"][1] - grpo["ci"][0] < 0.005
    assert values["sft_minus_canned"]["v"] == pytest.approx(per["sft"].mean() - per["canned"].mean())
    assert values["ideal_over_sft"]["v"] == pytest.approx(per["ideal"].mean() / per["sft"].mean())
    assert values["best_of_16_composite"]["ci"] == [0.015, 0.025] and values["composite_rho"]["v"] == 0.41
    assert values["garm_oracle_rho"]["v"] == 0.55  # from the rm artifact grpo.json names
    assert "| GaRM | 300 | 0.640 | 0.0500 | 0.550 | 0.600 | 1.000, 0.620, 0.350 |" in rendered(results, "reward_models")
    assert rendered(results, "fusion").splitlines()[2:5] == ["| external | 0.700 |", "| GaRM (κ 0.5) | 0.200 |",
                                                            "| rule | 0.100 |"]
    monitor = rendered(results, "monitor")
    assert "| 8 | 0.280 | 0.108 | **0.300** |" in monitor and "2026-12-07 · commit abc1234" in monitor
    assert all(rendered(results, name) for name in results["tables"])  # every cell renders with its format
    comparisons = [r[0] for r in results["tables"]["comparisons"]["rows"]]
    assert comparisons == ["GRPO − SFT, paired (evaluate)", "GRPO − SFT, the GRPO stage's own comparison",
                           "best of 16 by the composite reward − a random one of the same 16 SFT panels"]

    # the claims table's v1 column reads them
    shutil.copy(EXPERIMENTS / "claims.json", tmp_path / "experiments" / "claims.json")
    claims = tables.render_claims(tmp_path)
    row = next(line for line in claims.splitlines() if line.startswith("| GaRM ranks"))
    assert row.split(" | ")[1] == "0.550"
    row = next(line for line in claims.splitlines() if line.startswith("| headroom"))
    assert row.split(" | ")[1] == tables.number(values["ideal_over_sft"]["v"], "{:.2f}×")


def test_a_run_that_is_not_the_experiments_is_refused(recorder, tmp_path):
    run = pipeline_run(tmp_path, ["simulator=v1"])  # the contextual split and CIs: not v1's protocol
    with pytest.raises(SystemExit, match="lack data.split.by=context"):
        recorder("default_run").main([str(run), "abc1234"])


def test_population_b_records_its_pipeline_run_and_then_its_more_rl_run(recorder, tmp_path):
    module = recorder("population_b")
    module.main(["--pending"])
    run = pipeline_run(tmp_path, ["experiment=population_b"])
    module.main([str(run), "abc1234"])
    grpo_run = tmp_path / "logs" / "grpo" / "runs" / "2026-12-08_09-00-00_77"
    hydra_files(grpo_run, ["experiment=[population_b,rl_scale]", "stage=grpo", "grpo.rl_logs.enabled=false"])
    write(grpo_run, "grpo.json", grpo_json(tmp_path / "artifacts" / "grpo" / "g2", samples=3200, kept=12, lift=0.05))
    results = module.main(["--more-rl", str(grpo_run), "def5678"])
    assert results["runs"]["population_b"]["commit"] == "abc1234"  # the first run is kept
    assert results["runs"]["population_b_more_rl"]["date"] == "2026-12-08"
    assert {"grpo_minus_sft", "garm_oracle_rho", "grpo_minus_sft_more_rl"} <= set(results["values"])
    assert results["values"]["grpo_minus_sft_more_rl"]["ci"] == [pytest.approx(0.046), pytest.approx(0.054)]
    assert "| 3,200 | +0.0500 [+0.0460, +0.0540] | +30.0 | 9 / 8 / 3 | 12 | no |" in rendered(results, "more_rl_lift")
    assert "not yet measured" not in "".join(rendered(results, t) for t in results["tables"])
    with pytest.raises(SystemExit, match="lack experiment"):
        module.main(["--more-rl", str(run), "abc1234"])


def test_rl_scale_records_the_grpo_stages_comparison_and_checkpoints(recorder, tmp_path):
    module = recorder("rl_scale")
    run = tmp_path / "logs" / "grpo" / "runs" / "2026-12-09_08-00-00_1"
    hydra_files(run, list(module.OVERRIDES))
    write(run, "grpo.json", grpo_json(tmp_path / "artifacts" / "grpo" / "g3", samples=3200, kept=12, lift=0.1))
    results = module.main([str(run), "abc1234"])
    assert results["values"]["grpo_minus_sft"]["v"] == 0.1
    assert results["runs"]["v1_rl_scale"]["command"] == module.COMMAND
    policies = rendered(results, "policies")
    assert "| SFT | 0.1000 [0.0900, 0.1100] | 1.000 | 0.450 | 0.620 |" in policies
    assert "| GRPO, 3,200 samples | 0.2000 [0.1900, 0.2100] |" in policies
    assert [r[0] for r in results["tables"]["checkpoints"]["rows"]] == ["0", "4", "8", "12"]
    assert results["tables"]["checkpoints"]["rows"][-1][3] == {"v": 0.3, "bold": True}


def sweep(tmp_path: Path, task: str, experiment: str, jobs: list[list[str]]) -> list[Path]:
    """A sweep folder: multirun.yaml with the command's overrides, one folder per job with its own."""
    root = tmp_path / "logs" / task / "multiruns" / "2026-12-10_07-00-00_9"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [experiment]}}}))
    folders = []
    for i, overrides in enumerate(jobs):
        folder = root / str(i)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, experiment]))
        folders.append(folder)
    return folders


def sft_json(teacher: str, assembly: bool, ctr: float) -> dict:
    return {"teacher": {"name": teacher}, "assembly": {"enabled": assembly, "full_panels": 30, "contexts": 40},
            "train": {"data": {"train_examples": 28}, "steps": 24},
            "eval": {"split": "test", "contexts": 20, "sft": {**measured(ctr), "format_rate": 1.0},
                     "baseline": {**measured(0.05), "format_rate": 0.4},
                     "lift": {"ctr_diff": ctr - 0.05, "ci_low": ctr - 0.06, "ci_high": ctr - 0.04}}}


def test_table3_records_one_row_per_job_after_the_baseline(recorder, tmp_path):
    folders = sweep(tmp_path, "sft", "experiment=table3", [["teacher=none", "sft.assembly.enabled=true"],
                                                           ["teacher=smollm2", "sft.assembly.enabled=false"]])
    write(folders[0], "sft.json", sft_json("none", True, 0.08))
    write(folders[1], "sft.json", sft_json("smollm2", False, 0.09))
    results = recorder("table3").main([str(folders[0].parent), "abc1234"])
    assert results["runs"]["table3"]["command"] == "python -m clicks2pref -m experiment=table3"
    text = rendered(results, "results")
    assert "| prompted baseline (no SFT) | — | — | — | 0.0500 [0.0400, 0.0600] | 0.400 | — |" in text
    assert "| none (clicks only) | on | 30 / 40 | 28 | 0.0800 [0.0700, 0.0900] | 1.000 | +0.0300 [+0.0200, +0.0400] |" \
        in text
    assert "| SmolLM2-135M | off |" in text


def test_rm_compare_records_every_trained_model_of_every_job(recorder, tmp_path):
    folders = sweep(tmp_path, "rm", "experiment=rm_compare", [["reward_model.objective=pairwise", "reward_model=tiny"]])
    split = {"n_pairs": 80, "accuracy": 0.6, "ece": 0.07, "oracle_spearman": 0.3, "oracle_within_panel": 0.55}
    write(folders[0], "calibration.json", {"objective": "pairwise", "kinds": {
        "garm": {"train_seconds": 12.0, "max_grad_norm": 4.5, "splits": {"iid": {**split, "sigma_mean": 0.8},
                                                                          "ood": {"n_pairs": 0}}},
        "btrm": {"train_seconds": 11.0, "max_grad_norm": 3.5, "splits": {"iid": split}}}})
    results = recorder("rm_compare").main([str(folders[0].parent), "abc1234"])
    lines = rendered(results, "models").splitlines()
    assert lines[2] == ("| pairwise | tiny-llama (random, full FT) | GaRM | 0.600 | 0.0700 | 0.300 | 0.550 |  |  | 0.800 "
                        "| 4.50 | 12 |")
    assert lines[3].startswith("| pairwise | tiny-llama (random, full FT) | BTRM | 0.600 |")


def test_lambda_sweep_reads_sigma_at_the_last_logged_training_step(recorder, tmp_path):
    folders = sweep(tmp_path, "rm", "experiment=lambda_sweep", [["reward_model.loss.variance_reg.lambda=1e-2"]])
    write(folders[0], "calibration.json", {"kinds": {"garm": {"train_seconds": 90.0, "max_grad_norm": 7.5, "splits": {
        "val": {"accuracy": 0.7}, "iid": {"accuracy": 0.6, "ece": 0.1, "sigma_mean": 0.75}}}}})
    (folders[0] / "csv").mkdir()
    (folders[0] / "csv" / "metrics.csv").write_text(  # Lightning's CSV logger: a row per step, empty where unlogged
        "epoch,rm/garm/grad_norm,rm/garm/sigma_mean,rm/garm/sigma_std,rm/garm/val_acc,step\n"
        "0,5.0,0.9,0.2,,0\n0,6.0,0.8,0.15,,1\n0,,,,0.7,1\n")
    results = recorder("lambda_sweep").main([str(folders[0].parent), "abc1234"])
    assert rendered(results, "sweep").splitlines()[2] == \
        "| 1e-2 | 0.600 | 0.100 |  |  | 0.700 | 0.750 | 0.800 | 0.150 | 7.50 | 90 |"


def test_the_flywheel_records_its_rounds_and_pairs_each_round_with_the_previous(recorder, tmp_path):
    n = len(clicks2pref.eval.ctr.split_clusters(clicks2pref.compose([]), "test"))  # the default split, by topic
    out = tmp_path / "logs" / "flywheel" / "2026-12-11_06-00-00"
    row = {"round": 1, "weeks": 4, "garm_iid_oracle_rho": 0.5, "sft_ctr": 0.1, "grpo_ctr": 0.11, "grpo_vs_sft": 0.01,
           "ci_low": -0.01, "ci_high": 0.03, "gsb": 10.0, "eval_sft_ctr": 0.1, "eval_grpo_ctr": 0.11,
           "eval_grpo_vs_sft": 0.01, "eval_ci_low": 0.0, "eval_ci_high": 0.02, "eval_gsb": 12.0, "eval_bo_gain": 0.02,
           "eval_reward_rho": 0.3}
    write(out, "flywheel.json", [row, dict(row, round=2, weeks=5)])
    write(out, "run.json", {"command": "python experiments/flywheel/run.py --rounds 2", "overrides": []})
    for r, shift in ((1, 0.0), (2, 0.02)):
        write(out / f"round{r}" / "evaluate", "evaluation.json",
              evaluation(n, {"baseline": 0.0, "sft": 0.03 + shift, "grpo": 0.04 + shift, "sft+bo16": 0.05}, seed=r))
    results = recorder("flywheel").main([str(out), "abc1234"])
    assert results["runs"]["flywheel"]["command"] == "python experiments/flywheel/run.py --rounds 2"
    assert "| 2 | 5 | 0.500 | +0.0100 [−0.0100, +0.0300] | +10.0 | 0.1000 | 0.1100 |" in rendered(results, "rounds")
    between = {r[1]: r[2] for r in results["tables"]["between_rounds"]["rows"]}
    per = {r: json.loads((out / f"round{r}" / "evaluate" / "evaluation.json").read_text())["per_context_ctr"]
           for r in (1, 2)}
    expected = np.mean(np.asarray(per[2]["grpo"]) - np.asarray(per[1]["grpo"]))
    assert between["GRPO"]["v"] == pytest.approx(expected)
    assert between["GRPO"]["ci"][0] < expected < between["GRPO"]["ci"][1]


def test_paper_scale_records_stage_times_and_the_evaluation(recorder, tmp_path):
    module = recorder("paper_scale")
    run = pipeline_run(tmp_path, ["experiment=paper_scale"])
    write(run, "collect.json", {"best_template": "concise", "weeks": [{"impressions": 100}] * 4, "seconds": 37.0})
    write(run, "sft.json", {"train": {"steps": 24, "val_loss_before": 2.16, "val_loss": 1.22, "val_format_rate": 1.0},
                            "seconds": 41.0})
    with pytest.raises(SystemExit):  # the run folder does not say which GPU ran it
        module.main([str(run), "abc1234"])
    results = module.main([str(run), "abc1234", "--machine", "1× NVIDIA H200"])
    assert results["runs"]["paper_scale"]["machine"] == "1× NVIDIA H200"
    times = rendered(results, "stage_times")
    assert "| collect | 37 s | 400 impressions, template concise |" in times
    assert "| sft | 41 s | 24 steps; val loss 2.16 → 1.22; val format rate 1.00 |" in times
    assert "| rm | 1,000 s | GaRM 500 s, BTRM 450 s of training |" in times
    assert "| grpo | 400 s | 12 steps in 300 s |" in times
    assert [r[0] for r in results["tables"]["results"]["rows"]][:3] == ["baseline", "sft", "grpo"]
    slots = {r[0]: r for r in results["tables"]["slots"]["rows"]}
    paper = clicks2pref.compose(["experiment=paper_scale"])
    assert slots["collect"][2].startswith(f"{paper.collect.sessions_per_week:,} sessions")


@pytest.mark.parametrize("folder", sorted(RECORDERS))
def test_before_any_run_every_measured_cell_reads_not_yet_measured(folder, recorder):
    module = recorder(folder)
    results = module.main(["--pending"])
    assert not results["values"]
    for name, table in results["tables"].items():
        if "run" not in table:  # a description (what each row is), not a measurement
            continue
        info = results["runs"][table["run"]]
        assert info["date"] is None and info["command"] and info["record"].startswith(f"python experiments/{folder}/")
        assert all(NOT_MEASURED in row for row in table["rows"]), name
        assert rendered(results, name).endswith(f"<sub>{NOT_MEASURED}: `{info['command']}`, then `{info['record']}` "
                                                f"(`results.json`: `{table['run']}`)</sub>\n")
    committed = json.loads((EXPERIMENTS / folder / "results.json").read_text())
    if all(info.get("date") is None for info in committed["runs"].values()):  # nothing recorded yet: as written
        assert committed == results


def test_an_evaluate_artifacts_measurements_render_as_the_run_folders_report():
    """The evaluate artifact stores per-context measurements; a recorder reading it gets the report a run folder
    gets, with the CIs computed under the default settings (whole topics resampled)."""
    import sys

    sys.path.insert(0, str(EXPERIMENTS))
    import record

    contexts = [["t1", "a"], ["t1", "b"], ["t2", "a"], ["t2", "b"]]
    policy = lambda ctr: {"per_context_ctr": ctr, "format_rate": 1.0, "distinct_2": 0.5,  # noqa: E731
                          "mean_pairwise_cosine": 0.3, "outputs": ["1. q?"] * 4, "contexts": contexts,
                          "samples_per_context": 1}
    stored = {"policies": {"baseline": "base:x", "sft": "sft:y"}, "split": "test", "contexts": 4,
              "samples_per_context": 1, "examples": [],
              "results": {"baseline": policy([0.1, 0.1, 0.2, 0.2]), "sft": policy([0.2, 0.3, 0.3, 0.4])}}
    report = record.evaluation(stored)
    rows = {r["policy"]: r for r in report["rows"]}
    assert rows["sft"]["oracle_ctr"] == pytest.approx(0.3) and rows["baseline"]["oracle_ctr"] == pytest.approx(0.15)
    assert rows["sft"]["lift"] == pytest.approx(1.0) and rows["sft"]["gsb"] == pytest.approx(100.0)
    assert report["ci"] == "95%" and report["per_context_ctr"]["sft"] == [0.2, 0.3, 0.3, 0.4]
    assert record.evaluation(report) is report  # a run folder's report passes through
