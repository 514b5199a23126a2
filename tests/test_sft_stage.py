"""The SFT stage end to end on smoke click logs with the tiny random Llama: training, saving, loading,
resuming after a kill, DDP on two CPU processes, and the Table 3 sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_config

# fixtures that train policies and reward models, and sweeps that run them several times: minutes each on
# 2 cores, so `make test-full` runs them (tests/test_pipeline.py covers every stage in the default run)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Tiny and fast: random 2-layer Llama trained fully, single-suggestion targets (k=1) so every clicked
# suggestion of the smoke logs is an example, no teacher, lexical similarity.
TINY = ["experiment=smoke", "stage=sft", "sft=full", "sft.assembly.k=1",
        "sft.assembly.similarity=lexical", "sft.train.batch_size=4", "sft.train.max_steps=12",
        "sft.train.val_every_n_steps=6", "sft.train.format_probe=2", "sft.train.optimizer.lr=3e-3",
        "sft.data.val_fraction=0.25", "sft.eval.enabled=false"]


def run_sft(overrides, tmp_path):
    from clicks2pref.__main__ import run_stage

    return run_stage(compose_config(overrides, tmp_path))


def test_tiny_sft_lowers_val_loss_and_saves_a_loadable_policy(smoke_collect, tmp_path):
    from clicks2pref.data.io import read_jsonl
    from clicks2pref.data.parsing import parse_suggestions
    from clicks2pref.models.policies import load_sft_policy

    _, collect = smoke_collect
    result = run_sft(TINY + [f"data.logs={collect['logs']}", "sft.eval.enabled=true", "sft.eval.max_contexts=4",
                             "sft.eval.bootstrap_samples=50"], tmp_path)
    train = result["train"]
    assert train["val_loss"] < train["val_loss_before"] - 0.5, train
    assert result["template"] == collect["best_template"]
    assert set(result["eval"]) >= {"sft", "baseline", "lift"}
    art = Path(result["path"])
    rows = read_jsonl(art / "sft_data.jsonl")
    assert rows and all(set(r) >= {"context", "target", "source"} for r in rows)
    assert all(parse_suggestions(r["target"], 1).well_formed for r in rows)
    for name in ("sft.json", "sft.md", "metrics.json"):
        assert (art / name).exists() and (tmp_path / name).exists()
    assert not list(art.parent.glob(".work-*"))  # the checkpoint folder is gone once the artifact exists
    import torch

    cfg = compose_config(TINY, tmp_path)
    model, tok = load_sft_policy(art, cfg)
    ids = torch.tensor([tok("1. Can I freeze basil?")["input_ids"]])
    with torch.no_grad():
        loaded = model(input_ids=ids).logits
    assert loaded.shape[-1] == len(tok) and torch.isfinite(loaded).all()
    # cache: the same config reuses the artifact
    start = time.time()
    again = run_sft(TINY + [f"data.logs={collect['logs']}", "sft.eval.enabled=true", "sft.eval.max_contexts=4",
                            "sft.eval.bootstrap_samples=50"], tmp_path)
    assert again["key"] == result["key"] and again["train"] == json.loads(json.dumps(train))
    assert time.time() - start < 20


def test_lora_policy_round_trips_through_load_sft_policy(smoke_collect, tmp_path):
    import torch

    from clicks2pref.models.generate import chat_inputs
    from clicks2pref.models.policies import load_sft_policy

    _, collect = smoke_collect
    overrides = [o for o in TINY if o != "sft=full"] + [f"data.logs={collect['logs']}", "sft.train.max_steps=3",
                                                       "sft.train.validate_before=false", "sft.save_merged=true"]
    result = run_sft(overrides, tmp_path)
    art = Path(result["path"])
    assert (art / "policy" / "adapter_config.json").exists() and (art / "merged").is_dir()
    cfg = compose_config(overrides, tmp_path)
    merged, tok = load_sft_policy(art, cfg, merge=True)
    peft, _ = load_sft_policy(art, cfg, merge=False)
    ids = torch.tensor(chat_inputs(tok, [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]]))
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft(input_ids=ids).logits, atol=1e-4)


def _cli(args, root):
    return [sys.executable, "-m", "clicks2pref", *args, f"paths.root_dir={root}", "logger=csv"]


def test_killed_run_resumes_from_its_checkpoint(smoke_collect, tmp_path):
    _, collect = smoke_collect
    args = TINY + [f"data.logs={collect['logs']}", "sft.train.max_steps=60", "sft.train.ckpt_every_n_steps=3",
                   "sft.train.val_every_n_steps=30", "sft.train.validate_before=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(_cli(args, tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and first.poll() is None:
            if list((tmp_path / "artifacts" / "sft").glob(".work-*/policy/ckpt/last.ckpt")):
                break
            time.sleep(0.05)
        assert first.poll() is None, "the run finished before it could be killed; raise max_steps"
        time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not list((tmp_path / "artifacts" / "sft").glob("[!.]*")), "a killed run left an artifact"
    done = subprocess.run(_cli(args, tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next((tmp_path / "artifacts" / "sft").glob("*/sft.json")).read_text())
    assert result["train"]["resumed_from"] and result["train"]["resumed_from"].endswith("last.ckpt")
    assert "resuming from" in done.stdout + done.stderr
    metrics = (next(tmp_path.glob("logs/sft/runs/*/csv/metrics.csv")))  # any run folder has the CSV
    assert metrics.exists()


def test_ddp_cpu_matches_one_process(smoke_collect, tmp_path):
    _, collect = smoke_collect
    base = TINY + [f"data.logs={collect['logs']}", "sft.train.max_steps=6", "sft.train.val_every_n_steps=6",
                   "sft.train.validate_before=true", "sft.train.format_probe=0", "cache=false"]
    one = run_sft(base, tmp_path / "one")["train"]
    two = run_sft(base + ["trainer=ddp_cpu"], tmp_path / "two")["train"]
    assert one["val_loss_before"] == pytest.approx(two["val_loss_before"], rel=1e-5)
    assert one["val_loss"] < one["val_loss_before"]
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-4, abs=1e-4)


def test_nonfinite_losses_skip_steps_then_stop_training(tmp_path):
    import pytorch_lightning as pl
    import torch

    from clicks2pref.errors import NonFiniteLossError
    from clicks2pref.lit.sft_datamodule import SFTDataModule
    from clicks2pref.lit.sft_module import SFTModule
    from clicks2pref.models.registry import ModelConfig, load_causal_lm

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    examples = [{"messages": [{"role": "user", "content": f"question {i}?"}], "target": "1. Why?"} for i in range(8)]
    dm = SFTDataModule(tok, examples, [], batch_size=2, max_length=64)
    module = SFTModule(model, torch.optim.AdamW, max_nonfinite_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" not in n}
    with pytest.raises(NonFiniteLossError):
        trainer.fit(module, datamodule=dm)
    assert module.nonfinite_total == 3  # two tolerated in a row, the third stops training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)  # no update


@pytest.mark.slow
def test_table3_sweep_at_smoke_sizes(smoke_collect, tmp_path):
    """`-m experiment=table3` on smoke sizes: every row trains and reports CTR and format rate."""
    _, collect = smoke_collect
    args = ["-m", "experiment=[smoke,table3]", f"data.logs={collect['logs']}",
            "sft.assembly.similarity=lexical", "sft.train.max_steps=4", "sft.train.val_every_n_steps=4",
            "sft.train.format_probe=2", "teacher.train.max_steps=2", "teacher.num_candidates=3",
            "teacher.generation.max_new_tokens=12", "sft.eval.max_contexts=4", "sft.eval.bootstrap_samples=50",
            "sft.assembly.max_cosine=0.99", "sft.assembly.max_ngram_overlap=0.99", "sft.assembly.min_words=1",
            "sft.assembly.max_words=40", "sft.assembly.require_question=false", "sft.assembly.k=1"]
    done = subprocess.run(_cli(args, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(tmp_path.glob("logs/sft/multiruns/*/*/metrics.json"))
    assert len(runs) == 6
    for path in runs:
        metrics = json.loads(path.read_text())
        assert {"sft/sft_oracle_ctr", "sft/sft_format_rate", "sft/baseline_oracle_ctr"} <= set(metrics)
