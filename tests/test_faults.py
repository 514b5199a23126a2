"""A hostile but fair user: corrupt and truncated artifacts, stale checkpoints, concurrent runs, folders that
ask to run their own code, empty logs. Each case asserts what the stage does and that nothing a later run
would trust is left behind. Smoke size: a tiny policy fine-tuned on the smoke logs."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import compose_config

SFT = ["experiment=smoke", "stage=sft", "sft.eval.enabled=false", "sft.train.ckpt_every_n_steps=1", "logger=[]"]


def sft_config(logs: str, root: Path, *extra: str):
    return compose_config([*SFT, f"data.logs={logs}", *extra], root)


def run(cfg):
    from clicks2pref.__main__ import run_stage

    return run_stage(cfg)


@pytest.fixture
def built(smoke_collect, tmp_path):
    """One verified SFT artifact, and the logs it came from."""
    _, collected = smoke_collect
    result = run(sft_config(collected["logs"], tmp_path))
    return collected["logs"], tmp_path, Path(result["path"]), result


def aside(folder: Path, why: str) -> list[Path]:
    return sorted(folder.parent.glob(f"{folder.name}.{why}-*"))


@pytest.mark.parametrize("damage", ["zeroed weights", "truncated weights", "truncated metadata", "deleted file"])
def test_a_damaged_artifact_is_moved_aside_and_rebuilt(built, caplog, damage):
    logs, root, final, first = built
    weights = next((final / "policy").glob("*.safetensors"))
    if damage == "zeroed weights":
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size // 2)
            f.write(b"\0" * 4096)
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "truncated metadata":
        (final / "sft.json").write_text((final / "sft.json").read_text()[:50])
    else:
        (final / "sft_data.jsonl").unlink()
    with caplog.at_level(logging.WARNING):
        again = run(sft_config(logs, root))
    assert any("fails verification" in r.getMessage() for r in caplog.records)
    assert again["key"] == first["key"] and again["train"]["steps"] == first["train"]["steps"]
    assert len(aside(final, "corrupt")) == 1  # kept for inspection, nothing deleted
    from clicks2pref.manifest import verify

    assert verify(final) is None  # the rebuilt artifact is whole


def test_cache_off_retrains_from_scratch_and_moves_the_old_work_folder_aside(built):
    logs, root, final, first = built
    work = final.parent / f".work-{first['key']}"
    (work / "policy" / "ckpt").mkdir(parents=True)
    (work / "policy" / "ckpt" / "last.ckpt").write_bytes(b"a stale checkpoint of another run")
    again = run(sft_config(logs, root, "cache=off"))
    assert again["train"]["resumed_from"] is None
    assert len(aside(work, "old")) == 1 and not work.exists()
    assert aside(final, "corrupt") == []


def test_an_unreadable_checkpoint_is_moved_aside_and_training_restarts(smoke_collect, tmp_path, caplog):
    from clicks2pref.stages.artifacts import key as artifact_key

    _, collected = smoke_collect
    cfg = sft_config(collected["logs"], tmp_path)
    template = json.loads((Path(collected["logs"]).parent / "templates.json").read_text())["best_template"]
    ckpt = Path(cfg.paths.artifacts_dir) / "sft" / f".work-{artifact_key(cfg, 'sft', {}, extra=template)}" / \
        "policy" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING):
        result = run(cfg)
    assert result["train"]["resumed_from"] is None
    assert any("cannot read" in r.getMessage() and "last.ckpt" in r.getMessage() for r in caplog.records)
    assert (Path(result["path"]) / "manifest.json").exists()


def _run_in_process(logs: str, root: str, queue) -> None:
    """One run of a separate process (spawned: a fresh interpreter, as a second terminal would be)."""
    from tests.conftest import compose_config

    from clicks2pref.__main__ import run_stage

    logging.basicConfig(level=logging.INFO)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("clicks2pref").addHandler(Keep())
    cfg = compose_config([*SFT, f"data.logs={logs}", "sft.train.max_steps=8"], Path(root) / f"run-{os.getpid()}")
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.artifacts_dir = str(Path(root) / "artifacts")  # one artifact folder, two run folders
    result = run_stage(cfg)
    queue.put({"key": result["key"], "steps": result["train"]["steps"], "log": records})


def test_two_processes_on_one_key_build_it_once(smoke_collect, tmp_path):
    _, collected = smoke_collect
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_in_process, args=(collected["logs"], str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0]["key"] == results[1]["key"]
    logs = [r["log"] for r in results]
    trained = [any("sft: assembly" in m for m in log) for log in logs]
    assert sorted(trained) == [False, True]  # exactly one trained
    waited = logs[trained.index(False)]
    assert any("reusing" in m for m in waited)
    folders = [p for p in (tmp_path / "artifacts" / "sft").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in folders] == [results[0]["key"]]  # one artifact, no work folder, nothing aside


def test_a_folder_that_asks_to_run_its_own_code_is_refused(built, tmp_path):
    from clicks2pref.errors import ModelNotFoundError
    from clicks2pref.models.policies import load_sft_policy

    logs, root, final, _ = built
    hostile = tmp_path / "hostile"
    shutil.copytree(final, hostile)
    (hostile / "manifest.json").unlink()  # a folder from elsewhere: nothing to verify against
    meta = json.loads((hostile / "sft.json").read_text())
    meta["model"]["trust_remote_code"] = True
    (hostile / "sft.json").write_text(json.dumps(meta))
    marker = tmp_path / "code-ran"
    (hostile / "policy" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = sft_config(logs, root)
    with pytest.raises(ModelNotFoundError, match="asks for trust_remote_code.*policy.model.trust_remote_code=true"):
        load_sft_policy(hostile, cfg)
    assert not marker.exists()
    # the same folder through the evaluate stage: one line, nothing loaded
    evaluate = compose_config(["experiment=smoke", "stage=evaluate", f"data.logs={logs}", f"eval.policies=[{hostile}]",
                               f"eval.reference={hostile}", "eval.calibration=false", "logger=[]"], tmp_path / "ev")
    with pytest.raises(ModelNotFoundError, match="asks for trust_remote_code"):
        run(evaluate)
    assert not marker.exists()


def test_a_reward_model_that_asks_for_remote_code_is_refused(tmp_path):
    from clicks2pref.errors import ModelNotFoundError
    from clicks2pref.models.registry import ModelConfig
    from clicks2pref.models.reward_heads import HeadConfig, build_reward_model, load_reward_model, save_reward_model

    cache = compose_config([], tmp_path / "cfg").paths.model_cache
    backbone = ModelConfig(name="tiny-llama")
    save_reward_model(build_reward_model("garm", backbone, HeadConfig(), cache), tmp_path / "garm", backbone)
    meta = json.loads((tmp_path / "garm" / "reward_model.json").read_text())
    meta["backbone"]["trust_remote_code"] = True
    (tmp_path / "garm" / "reward_model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelNotFoundError, match="reward_model.backbone.trust_remote_code=true"):
        load_reward_model(tmp_path / "garm", cache)


def test_a_user_folder_that_fails_its_manifest_is_one_line(built, tmp_path):
    logs, _, final, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(final, copy)
    weights = next((copy / "policy").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    from clicks2pref.errors import ModelNotFoundError

    cfg = compose_config(["experiment=smoke", "stage=evaluate", f"data.logs={logs}", f"eval.policies=[{copy}]",
                          f"eval.reference={copy}", "eval.calibration=false", "logger=[]"], tmp_path / "ev")
    with pytest.raises(ModelNotFoundError, match="fails verification: .*safetensors: 64 bytes"):
        run(cfg)


def test_grpo_resumes_a_killed_run_from_its_checkpoint_without_unpickling(smoke_collect, tmp_path, monkeypatch, caplog):
    """Killed after training (before its artifact): the rerun resumes from last.ckpt, loaded weights-only."""
    from clicks2pref.stages import grpo

    _, collected = smoke_collect
    cfg = compose_config(["experiment=smoke", "stage=grpo", f"data.logs={collected['logs']}", "logger=[]"], tmp_path)

    def killed(*args, **kwargs):
        raise RuntimeError("killed after training")

    with monkeypatch.context() as m:
        m.setattr(grpo, "evaluate", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run(cfg)
    assert list(Path(cfg.paths.artifacts_dir).glob("grpo/.work-*/ckpt/last.ckpt"))
    with caplog.at_level(logging.INFO):
        result = run(cfg)
    assert any("grpo: resuming from" in r.getMessage() for r in caplog.records)
    assert result["optimizer_steps"] == cfg.grpo.steps
    assert not list(Path(cfg.paths.artifacts_dir).glob("grpo/.work-*"))


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_logs_are_an_error_in_validate_and_in_every_stage(tmp_path, capsys, content):
    from clicks2pref.errors import ClickLogError
    from clicks2pref.validate import main as validate

    empty = tmp_path / "week1.jsonl"
    empty.write_text(content)
    assert validate([str(empty)]) == 1
    assert f"{empty}: no impressions" in capsys.readouterr().err
    with pytest.raises(ClickLogError, match=r"read 0 impressions from .*week1.jsonl \(1 file"):
        run(sft_config(str(empty), tmp_path / "run", "sft.template=concise"))


def test_json_error_text_reads_cleanly(tmp_path):
    from clicks2pref.data.io import iter_problems

    bad = tmp_path / "week1.jsonl"
    bad.write_text('{"impression_id": "x\n')
    text = str(next(iter_problems([str(bad)])))
    assert "at at" not in text and "column" in text


def test_the_cache_key_follows_the_code_each_stage_runs(tmp_path):
    """Editing the GaRM loss invalidates the reward models (and what reads them), never the click logs' stage
    more than its own imports say; the fingerprint is of the source files actually run (tests/test_cache_keys.py
    edits them)."""
    from clicks2pref.stages import artifacts

    cfg = compose_config(["experiment=smoke", "stage=pipeline"], tmp_path)
    rm, collect, grpo = (set(artifacts.code_modules(s, cfg)) for s in ("rm", "collect", "grpo"))
    assert {"clicks2pref/objectives/gaussian.py", "clicks2pref/lit/reward_module.py"} <= rm
    assert "clicks2pref/objectives/click_model.py" in rm  # loaded by name (reward_model.objective)
    assert "clicks2pref/objectives/grpo.py" in grpo and "clicks2pref/objectives/grpo.py" not in rm | collect
    assert "clicks2pref/rewards/garm.py" in grpo  # loaded by name (its `_target_`)
    assert "clicks2pref/lit/reward_module.py" not in collect
    # the cache's plumbing imports the reward presets; editing a reward must not recompute the click logs
    assert not {"clicks2pref/rewards/garm.py", "clicks2pref/rewards/composite.py"} & collect
    assert "clicks2pref/stages/artifacts.py" not in rm


def test_weights_that_diverge_stop_training_with_the_fix_named(tmp_path):
    """Finite training losses can still leave non-finite weights (an infinite step here; bf16-mixed on a GPU did it
    to SmolLM2): the policy would sample nothing and a later stage fail far from the cause."""
    from clicks2pref.errors import NonFiniteLossError
    from clicks2pref.lit.fit import fit_causal_lm
    from clicks2pref.models.registry import ModelConfig, load_causal_lm

    cfg = compose_config(["experiment=smoke", "logger=[]", "sft.train.max_steps=1", "sft.train.optimizer.lr=inf",
                          "sft.train.format_probe=0", "sft.train.val_every_n_steps=0",
                          "sft.train.scheduler.num_warmup_steps=0"], tmp_path)
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), cfg.paths.model_cache, seed=0)
    examples = [{"messages": [{"role": "user", "content": f"question {i}?"}], "target": "1. Why?"} for i in range(8)]
    with pytest.raises(NonFiniteLossError, match=r"sft\.train\.optimizer\.lr.*trainer\.precision=32"):
        fit_causal_lm(cfg, model, tok, examples[:6], examples[6:], cfg.sft.train, tmp_path / "work", [], "sft",
                      format_k=3, max_new_tokens=8)


def test_a_step_whose_gradients_are_not_finite_is_skipped_not_taken(tmp_path):
    """A finite loss with one NaN gradient: clipping would spread it to every gradient and the step would turn
    every weight NaN; the step is dropped and counted instead, and the other steps train."""
    import pytorch_lightning as pl
    import torch

    from clicks2pref.lit.sft_datamodule import SFTDataModule
    from clicks2pref.lit.sft_module import SFTModule
    from clicks2pref.models.registry import ModelConfig, load_causal_lm

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    from tests.conftest import nan_gradient_on_call

    calls = nan_gradient_on_call(model.model.norm.weight, 2)
    examples = [{"messages": [{"role": "user", "content": f"question {i}?"}], "target": "1. Why?"} for i in range(8)]
    dm = SFTDataModule(tok, examples, [], batch_size=2, max_length=64)
    module = SFTModule(model, torch.optim.AdamW, max_nonfinite_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0, default_root_dir=tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit(module, datamodule=dm)
    assert len(calls) == 4 and module.nonfinite_total == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.model.norm.weight, before["model.norm.weight"])  # three steps were taken


def test_steps_whose_gradients_stay_non_finite_stop_training_naming_the_cause(tmp_path):
    import pytorch_lightning as pl
    import torch

    from clicks2pref.errors import NonFiniteLossError
    from clicks2pref.lit.sft_datamodule import SFTDataModule
    from clicks2pref.lit.sft_module import SFTModule
    from clicks2pref.models.registry import ModelConfig, load_causal_lm
    from tests.conftest import nan_gradient_on_call

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    nan_gradient_on_call(model.model.norm.weight, *range(1, 11))
    examples = [{"messages": [{"role": "user", "content": f"question {i}?"}], "target": "1. Why?"} for i in range(8)]
    module = SFTModule(model, torch.optim.AdamW, max_nonfinite_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         gradient_clip_val=1.0, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row with non-finite gradients"):
        trainer.fit(module, datamodule=SFTDataModule(tok, examples, [], batch_size=2, max_length=64))
    assert all(torch.isfinite(p).all() for p in model.parameters())

