"""`stage=rm` end to end on the smoke click logs (tiny-llama backbone and reference), plus its config errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config

# fixtures that train policies and reward models, and sweeps that run them several times: minutes each on
# 2 cores, so `make test-full` runs them (tests/test_pipeline.py covers every stage in the default run)
pytestmark = pytest.mark.slow

# position_filter=none: the smoke logs hold few clicks below position 1, so skip_above leaves ~1 test pair
TINY_RM = ["stage=rm", "experiment=smoke", "reward_model.optim.epochs=2",
           "reward_model.checkpoint_every_n_steps=2", "reward_model.pairs.position_filter=none"]


@pytest.fixture(scope="module")
def rm_run(smoke_collect, tmp_path_factory):
    """One real stage=rm run (GaRM + BTRM) on the smoke logs, week 4 doubling as the OOD file."""
    from clicks2pref.__main__ import run_stage

    _, collected = smoke_collect
    logs = collected["logs"]
    ood = str(Path(logs).parent / "week4.jsonl")
    out = tmp_path_factory.mktemp("rm_stage")
    cfg = compose_config(TINY_RM + [f"data.logs={logs}", f"data.ood_logs={ood}",
                                    "reward_model.calibration.reference_ppl=true"], out)
    return cfg, run_stage(cfg), out


def test_stage_writes_models_pairs_and_calibration_report(rm_run):
    cfg, result, out = rm_run
    final = Path(cfg.paths.artifacts_dir) / "rm" / result["key"]
    assert set(result["models"]) == {"garm", "btrm"}
    report = json.loads((final / "calibration.json").read_text())
    for kind in ("garm", "btrm"):
        assert (final / kind / "reward_model.json").exists()
        splits = report["kinds"][kind]["splits"]
        assert set(splits) == {"val", "iid", "ood"}
        for split in ("iid", "ood"):
            m = splits[split]
            assert m["n_pairs"] > 0 and 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 1
            assert sum(b["count"] for b in m["reliability"]) == m["n_pairs"] and len(m["reliability"]) == 15
            assert sum(r["count"] for r in m["by_confidence"]) == m["n_pairs"]
            assert sum(r["count"] for r in m["by_log_ppl"]) == m["n_pairs"]
            assert all(r["confidence"] >= 0.5 for r in m["by_confidence"])
            assert (final / f"reliability_{kind}_{split}.png").stat().st_size > 1000
            assert (out / f"reliability_{kind}_{split}.png").exists()
        assert "sigma_mean" in splits["iid"] if kind == "garm" else "sigma_mean" not in splits["iid"]
        assert report["kinds"][kind]["steps"] > 0
    pairs = [json.loads(line) for line in (final / "pairs" / "train.jsonl").read_text().splitlines()]
    assert pairs and {p["week"] for p in pairs} <= {1, 2, 3}
    md = (out / "calibration.md").read_text()
    assert "| garm | iid |" in md and "| btrm | ood |" in md and "Accuracy by confidence decile" in md
    assert not list(final.parent.glob(f".work-{result['key']}*"))  # resume folder removed when done
    metrics = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "rm/garm/train_loss" in metrics and "rm/btrm/grad_norm" in metrics and "rm/garm/iid_ece" in metrics


def test_saved_models_load_for_the_grpo_stage(rm_run):
    from clicks2pref.eval.rm_calibration import pair_predictions
    from clicks2pref.models.reward_heads import load_reward_model

    cfg, result, _ = rm_run
    final = Path(cfg.paths.artifacts_dir) / "rm" / result["key"]
    iid = [json.loads(line) for line in (final / "pairs" / "iid.jsonl").read_text().splitlines()]
    garm = load_reward_model(result["models"]["garm"], cfg.paths.model_cache)
    assert garm.kind == "garm"
    # the redundancy term fitted beside the examination (smoke similarity: word overlap), saved with the model
    assert garm.redundancy["embedder"] == "lexical" and garm.redundancy["weight"] > 0
    pred = pair_predictions(garm, iid)
    assert pred["correct"].double().mean().item() == pytest.approx(result["metrics"]["garm"]["iid"]["accuracy"])
    rewards = garm.rewards([p["context"] for p in iid[:3]], [p["chosen"] for p in iid[:3]], kappa=1.0)
    assert rewards.shape == (min(3, len(iid)),) and torch.all(torch.isfinite(rewards))


def test_second_run_reuses_the_artifact(rm_run, tmp_path):
    from clicks2pref.__main__ import run_stage

    cfg, result, _ = rm_run
    again = compose_config(TINY_RM + [f"data.logs={cfg.data.logs}", f"data.ood_logs={cfg.data.ood_logs}",
                                      f"paths.artifacts_dir={cfg.paths.artifacts_dir}", "logger=[]",
                                      "reward_model.calibration.reference_ppl=true"], tmp_path)
    assert run_stage(again) == result
    assert (tmp_path / "calibration.md").exists()


def test_interrupted_kinds_are_resumed_from_the_work_folder(rm_run, tmp_path):
    """A finished kind waiting in .work-<key>/ (the run was killed before the next) is not retrained."""
    import shutil

    from clicks2pref.__main__ import run_stage
    from clicks2pref.stages.artifacts import key as artifact_key

    cfg, result, _ = rm_run
    overrides = TINY_RM + [f"data.logs={cfg.data.logs}", "logger=[]", "reward_model.kinds=[btrm]",
                             "rewards=btrm_instead_of_garm"]
    fresh = compose_config(overrides, tmp_path)
    key = artifact_key(fresh, "rm")
    work = Path(fresh.paths.artifacts_dir) / "rm" / f".work-{key}" / "btrm"
    work.mkdir(parents=True)
    shutil.copytree(Path(result["models"]["btrm"]), work / "model")
    (work / "train.json").write_text(json.dumps({"train_seconds": 0.0, "steps": 7, "max_grad_norm": 1.0,
                                                 "nonfinite_steps": 0, "val": {}}))
    resumed = run_stage(fresh)
    assert resumed["max_grad_norm"]["btrm"] == 1.0  # the stats of the reused model, not a new training


def test_killed_training_resumes_from_the_last_lightning_checkpoint(smoke_collect, tmp_path):
    from clicks2pref.stages.rm import load_splits, train_one

    _, collected = smoke_collect
    overrides = TINY_RM + [f"data.logs={collected['logs']}", "logger=[]", "reward_model.checkpoint_every_n_steps=1"]
    cfg = compose_config(overrides + ["trainer.max_steps=1"], tmp_path)  # "killed" after one step
    splits, examples, _ = load_splits(cfg)
    work = tmp_path / "work" / "garm"
    _, first = train_one(cfg, "garm", splits, examples, work, [])
    checkpoint = torch.load(work / "ckpt" / "last.ckpt", weights_only=True)  # no pickle needed
    assert first["steps"] == 1 and checkpoint["global_step"] == 1
    assert all(k.startswith("model.") for k in checkpoint["state_dict"])  # trainable weights only
    (work / "model" / "reward_model.json").unlink()  # as if killed before the model was saved
    _, resumed = train_one(compose_config(overrides, tmp_path), "garm", splits, examples, work, [])
    _, whole = train_one(compose_config(overrides, tmp_path), "garm", splits, examples, tmp_path / "whole", [])
    assert whole["steps"] >= 2                      # the kill came before the end
    assert resumed["steps"] == whole["steps"]       # continued to the end of the epochs, not from the start


def test_config_errors_name_the_key(tmp_path):
    from clicks2pref.config import validate
    from clicks2pref.errors import ConfigError

    cfg = compose_config(["stage=rm", "reward_model.kinds=[garm,crm]"], tmp_path)
    with pytest.raises(ConfigError, match="reward_model.kinds: unknown 'crm'"):
        validate(cfg)
    cfg = compose_config(["stage=rm", "reward_model.loss.variance_reg.kind=l1"], tmp_path)
    with pytest.raises(ConfigError, match="reward_model.loss.variance_reg.kind"):
        validate(cfg)
    with pytest.raises(Exception, match="lamda"):
        compose_config(["stage=rm", "reward_model.loss.variance_reg.lamda=0.1"], tmp_path)
    with pytest.raises(Exception, match="lambda"):
        compose_config(["stage=rm", "reward_model.loss.variance_reg.lambda=big"], tmp_path)


def test_lambda_and_variance_reg_reach_the_loss(tmp_path):
    cfg = compose_config(["experiment=lambda_sweep", "reward_model.loss.variance_reg.lambda=0.5"], tmp_path)
    assert cfg.stage.name == "rm" and list(cfg.reward_model.kinds) == ["garm"]
    assert getattr(cfg.reward_model.loss.variance_reg, "lambda") == 0.5
    assert cfg.reward_model.backbone.name == "minilm-l6" and cfg.reward_model.head.pooling == "mean"


def test_missing_logs_fail_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clicks2pref", "stage=rm", f"paths.root_dir={tmp_path}",
                           f"data.logs={tmp_path}/nothing*.jsonl", "logger=[]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "glob matches no files" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_lambda_sweep_multirun(smoke_collect, tmp_path):
    """The sweep as users run it (five GaRM jobs), shrunk: tiny-llama, one epoch, smoke logs."""
    _, collected = smoke_collect
    proc = subprocess.run([sys.executable, "-m", "clicks2pref", "-m", "experiment=lambda_sweep", "reward_model=tiny", "serve.rm_weeks=0",
                           f"data.logs={collected['logs']}", f"paths.root_dir={tmp_path}", "logger=csv"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted(tmp_path.glob("logs/rm/multiruns/*/*/calibration.json"))
    assert len(reports) == 5, sorted(str(p) for p in Path("/").glob(str(tmp_path)[1:] + "/**/calibration.json"))[:10]
    lambdas = []
    for report in reports:
        overrides = (report.parent / ".hydra" / "overrides.yaml").read_text().splitlines()
        lambdas.append(float(next(o for o in overrides if "variance_reg.lambda=" in o).split("=")[1]))
        garm = json.loads(report.read_text())["kinds"]["garm"]
        assert garm["splits"]["iid"]["n_pairs"] > 0 and garm["max_grad_norm"] > 0
    assert sorted(lambdas) == [0, 1e-3, 1e-2, 1e-1, 1]


def test_training_with_the_redundancy_discount_keeps_the_term_and_changes_what_the_network_learns(rm_run, tmp_path):
    from clicks2pref.__main__ import run_stage
    from clicks2pref.models.reward_heads import load_reward_model

    cfg, result, _ = rm_run
    other = run_stage(compose_config(TINY_RM + [f"data.logs={cfg.data.logs}", f"data.ood_logs={cfg.data.ood_logs}",
                                                "reward_model.calibration.reference_ppl=true",
                                                "reward_model.click_model.redundancy_in_training=true"], tmp_path))
    assert other["key"] != result["key"]
    plain, discounted = (load_reward_model(r["models"]["garm"], cfg.paths.model_cache) for r in (result, other))
    assert discounted.redundancy == plain.redundancy  # the same fit on the same impressions
    iid = [json.loads(line) for line in
           (Path(cfg.paths.artifacts_dir) / "rm" / result["key"] / "pairs" / "iid.jsonl").read_text().splitlines()]
    contexts, texts = [p["context"] for p in iid], [p["chosen"] for p in iid]
    assert not torch.allclose(plain.score(contexts, texts)["mu"], discounted.score(contexts, texts)["mu"], atol=1e-6)
