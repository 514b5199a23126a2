"""The sweep report and the analysis notebooks, run on real report files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from clicks2pref.report import job_rows, main as report_main

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def fake_sweep(root: Path) -> Path:
    """A multirun folder as Hydra writes it: three jobs, the last one failed before writing metrics."""
    sweep = root / "multiruns" / "2026-01-01_00-00-00"
    for n, (rewards, ctr) in enumerate([("full", 0.31), ("no_ppl", 0.22), ("no_rule", None)]):
        job = sweep / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- rewards={rewards}\n- experiment=table4\n")
        if ctr is not None:
            (job / "metrics.json").write_text(json.dumps({"grpo/eval/grpo_oracle_ctr": ctr, "grpo/eval/gsb": 10.0 * n}))
    return sweep


def test_report_has_one_row_per_job_with_swept_values_and_failures(tmp_path, capsys):
    sweep = fake_sweep(tmp_path)
    rows = job_rows(sweep)
    assert [r["rewards"] for r in rows] == ["full", "no_ppl", "no_rule"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert report_main([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    assert "| 0 | full | table4 | 0.3100 |" in md and "failed" in md
    assert (sweep / "report.csv").read_text().count("\n") == 4
    assert (sweep / "report_grpo_eval_grpo_oracle_ctr.png").stat().st_size > 0
    assert report_main([str(tmp_path / "nope")]) == 2


def run_notebook(name: str, env: dict) -> None:
    """Executes a committed notebook with `env` set: no cell errs and every plot cell (tagged `figure` by
    notebooks/make_notebooks.py) shows a PNG inline."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("traceback", errors[0])[-1:]
    plots = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert plots, f"{name} has no plot cell"
    for cell in plots:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"{name}: no figure from\n{cell.source}"


@pytest.mark.parametrize("kinds", [("garm", "btrm")])
def test_notebooks_run_on_report_files(tmp_path, kinds):
    pytest.importorskip("nbclient")
    from clicks2pref.eval.calibration_report import write_report
    from clicks2pref.eval.rm_calibration import calibration_metrics

    g = torch.Generator().manual_seed(0)
    report = {"kinds": {}}
    for kind in kinds:
        conf = 0.5 + 0.5 * torch.rand(400, generator=g)
        correct = torch.rand(400, generator=g) < conf
        report["kinds"][kind] = {"splits": {s: calibration_metrics({"confidence": conf, "correct": correct},
                                                                   log_ppl=torch.rand(400, generator=g))
                                            for s in ("iid", "ood")}}
    write_report(report, tmp_path / "rm")
    run_notebook("calibration.ipynb", {"RUN_DIR": str(tmp_path / "rm")})
    run_notebook("ablations.ipynb", {"SWEEP_DIR": str(fake_sweep(tmp_path))})
    sweep = tmp_path / "grpo_sweep"
    for n, rewards in enumerate(["full", "no_ppl"]):
        fake_grpo_run(sweep / str(n), rewards, csv_log=n == 0)
    run_notebook("training.ipynb", {"RUN_DIR": str(sweep / "0"), "SWEEP_DIR": str(sweep)})


def fake_grpo_run(folder: Path, rewards: str = "full", csv_log: bool = True) -> Path:
    """What a GRPO run leaves: grpo.json with the monitor's history (proxy up, oracle down from step 4: flagged
    at 6) and, with `logger=csv`, csv/metrics.csv where earlier stages' rows precede GRPO's (one per batch)."""
    history = [{"step": s, "proxy": 0.1 * s, "oracle_ctr": 0.3 - 0.02 * max(s - 2, 0)} for s in range(0, 9, 2)]
    (folder / "csv").mkdir(parents=True)
    (folder / "grpo.json").write_text(json.dumps({"rewards": rewards, "monitor": {
        "flagged": True, "flagged_at": [6], "history": history}}))
    if csv_log:
        rows = ["step,sft/loss,grpo/reward,grpo/kl,grpo/entropy,grpo/monitor/proxy_reward", "0,2.5,,,,", "1,2.1,,,,",
                "0,,,,,0.0"] + [f"{s},,{0.1 * s},{0.01 * s},{2 - 0.1 * s}," for s in range(8)]
        (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_training_figure_plots_reward_kl_entropy_and_the_monitor(tmp_path):
    from clicks2pref.eval.training import load_history, sweep_histories, training_figure, write_training_plot

    run = fake_grpo_run(tmp_path / "run")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("grpo:\n  num_iterations: 2\n")
    history = load_history(run)
    assert history["label"] == "full" and history["flagged_at"] == [6]
    assert history["reward"][:3] == [(0, 0.0), (2, 0.1), (4, 0.2)]  # batch b sampled by the policy at step b·μ
    assert len(history["kl"]) == len(history["entropy"]) == 8 and len(history["proxy"]) == 5  # grpo.json's, not csv's

    fig = training_figure([history, load_history(fake_grpo_run(tmp_path / "other", "no_ppl", csv_log=False))])
    reward, kl, entropy, proxy, oracle = fig.axes  # four panels and the monitor's twin axis (oracle CTR)
    assert [ax.get_title() for ax in (reward, kl, entropy)] == [
        "reward (mean composite)", "KL to the reference (k3)", "entropy (nats/token)"]
    assert len(reward.lines) == len(kl.lines) == len(entropy.lines) == 1  # the second run logged no csv
    assert list(reward.lines[0].get_xdata()) == [2 * b for b in range(8)]
    assert len(proxy.lines) == 2 + 2 and len(oracle.lines) == 2  # a proxy line per run and a flag line each
    assert list(oracle.lines[0].get_ydata()) == [h[1] for h in history["oracle_ctr"]]
    assert "oracle CTR" in oracle.get_ylabel() and "proxy" in proxy.get_ylabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full", "no_ppl"]  # one entry per run

    path = write_training_plot(run)
    assert path == run / "training.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_training_plot(tmp_path) is None  # nothing to plot: no file, no error
    assert not (tmp_path / "training.png").exists()
    assert sweep_histories(tmp_path) == []  # only numbered job folders (0/, 1/, ...) are a sweep's jobs


def test_joblib_sweep_keeps_going_past_a_failed_job_and_reports_it(tmp_path):
    """Two collect jobs in parallel processes (tiny random policy): the first fails, the second completes,
    and the report lists both."""
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "clicks2pref", "-m", "stage=collect", "experiment=smoke", "policy=tiny",
           "collect.model=null", "prompt=[concise]", "collect.contexts_per_template=-1,1", "collect.weeks=1",
           "collect.sessions_per_week=2",
           "collect.users_per_panel=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "collect.contexts_per_template: -1 must be at least 1" in (sweep / "0" / "error.txt").read_text()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["collect/impressions"] == 0  # random policy
    rows = job_rows(sweep)
    assert rows[0]["status"].startswith("failed: error: collect.contexts_per_template") and rows[1]["status"] == "ok"
