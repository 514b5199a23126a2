"""Exporting trained policies and reward models as self-contained folders, and trying them with `suggest`.

One real SFT artifact at smoke size (tiny random Llama, LoRA, evaluated on 2 contexts) from the session's smoke
logs; a GRPO artifact laid out as the grpo stage writes it (random LoRA adapters on the merged SFT weights,
which is what makes a plain peft load wrong); tiny reward models. What matters is that the export loads with
plain transformers and computes exactly what the project's own loaders compute.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

import clicks2pref.suggest as suggest_cli
from clicks2pref.__main__ import run_stage
from clicks2pref.data.prompts import build_messages
from clicks2pref.export import PROMPT_FILE, export
from clicks2pref.export import main as export_main
from clicks2pref.manifest import verify, write_manifest
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.registry import LoraConfig, ModelConfig, apply_training_options
from clicks2pref.models.reward_heads import HeadConfig, build_reward_model, load_reward_model, save_reward_model
from clicks2pref.models.policies import load_grpo_policy, load_sft_policy
from clicks2pref.suggest import read_conversation
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
TRAINED_WITH = ["experiment=smoke"]  # the overrides the artifacts below were trained with
SFT = [*TRAINED_WITH, "stage=sft", "sft.eval.enabled=true", "sft.eval.max_contexts=2", "logger=[]"]
CONTEXT = [{"role": "user", "content": "How do I keep basil alive indoors?"},
           {"role": "assistant", "content": "Give it six hours of sun and let the soil dry between waterings."}]
PLAIN = "How do I keep basil alive indoors?\n\nGive it six hours of sun and let the soil dry between waterings.\n"
NUMBERED = re.compile(r"^[1-3]\. ")


@pytest.fixture(scope="module")
def sft(smoke_collect, tmp_path_factory):
    """(config, artifact folder, result) of a real smoke-size SFT run, evaluated."""
    _, collected = smoke_collect
    cfg = compose_config([*SFT, f"data.logs={collected['logs']}"], tmp_path_factory.mktemp("export_sft"))
    result = run_stage(cfg)
    return cfg, Path(result["path"]), result


@pytest.fixture(scope="module")
def exported(sft, tmp_path_factory):
    _, folder, _ = sft
    out = tmp_path_factory.mktemp("exported") / "policy"
    assert export_main([str(folder), str(out), *TRAINED_WITH]) == 0
    return out


@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory):
    """A GaRM with a LoRA backbone (adapters and head randomised: a merge that changes something) laid out as
    the rm stage writes it (`rm/<key>/garm`, the manifest one level up), and its export."""
    root = tmp_path_factory.mktemp("rm")
    cache = compose_config(TRAINED_WITH, root).paths.model_cache
    backbone = ModelConfig(name="tiny-llama", lora=LoraConfig())
    model = build_reward_model("garm", backbone, HeadConfig(), cache)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.normal_(std=0.05)
    folder = save_reward_model(model, root / "rm" / "garm", backbone, extra={"stats": {"steps": 3, "val": {}}})
    (root / "rm" / "rm.json").write_text(json.dumps({"metrics": {"garm": {"iid": {
        "n_pairs": 10, "accuracy": 0.6, "ece": 0.05, "sigma_mean": 1.0}}}}))
    write_manifest(root / "rm")
    out = root / "exported_garm"
    assert export_main([str(folder), str(out), *TRAINED_WITH]) == 0
    return model.eval(), folder, out, cache


def logits(model, tok, messages) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(chat_inputs(tok, [messages]))).logits


def test_exported_policy_loads_with_plain_transformers_and_computes_what_the_artifact_does(sft, exported):
    cfg, folder, result = sft
    names = {p.name for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", PROMPT_FILE,
            "README.md", "manifest.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"} and verify(exported) is None
    model, tok = AutoModelForCausalLM.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)
    reference, ref_tok = load_sft_policy(folder, cfg)
    messages = build_messages(cfg.prompt[result["template"]], CONTEXT)
    assert chat_inputs(tok, [messages]) == chat_inputs(ref_tok, [messages])
    assert torch.allclose(logits(model, tok, messages), logits(reference.eval(), ref_tok, messages), atol=1e-5)
    gen = cfg.policy.generation
    assert (model.generation_config.do_sample, model.generation_config.temperature, model.generation_config.top_p,
            model.generation_config.max_new_tokens) == (gen.do_sample, gen.temperature, gen.top_p, gen.max_new_tokens)
    prompt = json.loads((exported / PROMPT_FILE).read_text())
    assert prompt["template"] == result["template"]
    assert prompt["prefix"] + CONTEXT + prompt["suffix"] == messages  # the exact training prompt, rebuilt


def test_model_card_names_the_template_holds_the_evaluation_and_its_snippet_runs(sft, exported):
    cfg, _, result = sft
    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "transformers" and "sft" in card.data.tags
    text = card.text
    instruction = json.dumps(cfg.prompt[result["template"]].instruction)  # as the card's JSON block holds it
    assert f"template `{result['template']}`" in text and instruction in text
    assert "## Evaluation" in text and "prompted baseline" in text and "Lift vs. baseline" in text
    assert f"{result['data']['clicked_suggestions']} clicked suggestions" in text
    snippet = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "clicks2pref" not in snippet.replace(PROMPT_FILE, "")  # plain transformers only
    exec(snippet.replace('"PATH"', repr(str(exported))), {})  # a random tiny model prints noise; it must run


def test_suggest_prints_numbered_suggestions_for_a_json_conversation(exported):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "clicks2pref.suggest", str(exported), "--seed", "0"],
                         input=json.dumps(CONTEXT), capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) <= 3 and all(NUMBERED.match(line) for line in lines), run.stdout


def test_conversations_come_as_json_turns_a_context_object_or_plain_text():
    assert read_conversation(json.dumps(CONTEXT)) == CONTEXT
    assert read_conversation(json.dumps({"context": CONTEXT})) == CONTEXT
    assert read_conversation(PLAIN) == CONTEXT
    for bad, why in [("", "no conversation"), ("Just a question?", "last turn must be an assistant turn"),
                     (json.dumps([{"role": "bot", "content": "hi"}]), "role 'bot'")]:
        with pytest.raises(suggest_cli.SuggestError, match=why):
            read_conversation(bad)


def test_grpo_export_holds_the_sft_weights_its_adapters_were_trained_on(sft, tmp_path):
    cfg, sft_folder, result = sft
    merged, tok = load_sft_policy(sft_folder, cfg)
    grpo = apply_training_options(merged, ModelConfig(name="tiny-llama", lora=LoraConfig()))
    with torch.no_grad():
        for name, p in grpo.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # as if trained: adapters that move the logits
    folder = sft_folder.parents[1] / "grpo" / "0123456789ab"  # as the grpo stage writes it
    grpo.save_pretrained(folder / "policy", safe_serialization=True)
    tok.save_pretrained(folder / "policy")
    m = {"oracle_ctr": 0.1, "ci_low": 0.0, "ci_high": 0.2, "format_rate": 0.5, "distinct_2": 0.4,
         "mean_pairwise_cosine": 0.6}
    (folder / "grpo.json").write_text(json.dumps({
        "key": folder.name, "rewards": "full", "reward": "0.6·garm + 0.4·rule", "weights": {"garm": 0.6, "rule": 0.4},
        "tau": None, "template": result["template"], "init": "sft", "steps": 2, "optimizer_steps": 2,
        "eval": {"split": "test", "contexts": 2, "ci": "95%", "grpo": m, "sft": m,
                 "lift": {"ctr_diff": 0.0, "ci_low": -0.1, "ci_high": 0.1, "relative": 0.0},
                 "gsb": {"gsb": 0.0, "good": 0, "same": 2, "bad": 0}},
        "monitor": {"flagged": False, "flagged_at": []}, "inputs": {"sft": result["key"]}}))
    write_manifest(folder)

    out = export(folder, tmp_path / "grpo", TRAINED_WITH)
    model, out_tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    messages = build_messages(cfg.prompt[result["template"]], CONTEXT)
    reference, ref_tok = load_grpo_policy(folder, cfg)
    exported_logits = logits(model, out_tok, messages)
    assert torch.allclose(exported_logits, logits(reference.eval(), ref_tok, messages), atol=1e-5)
    sft_only, _ = load_sft_policy(sft_folder, cfg)
    assert not torch.allclose(exported_logits, logits(sft_only.eval(), ref_tok, messages), atol=1e-3)
    text = (out / "README.md").read_text()
    assert "reward preset `full`" in text and "Lift vs. SFT" in text and f"sft/{result['key']}" in text


def test_reward_model_export_merges_the_lora_and_gives_the_same_mu_and_sigma(reward_folder):
    model, _, out, cache = reward_folder
    meta = json.loads((out / "reward_model.json").read_text())
    assert meta["weights"] == "backbone" and meta["backbone"]["lora"] is None
    assert not (out / "adapter.safetensors").exists() and verify(out) is None
    loaded = load_reward_model(out, cache)
    suggestions = ["Can I grow basil from cuttings?", "How often should I water basil?"]
    want, got = model.score([CONTEXT] * 2, suggestions), loaded.score([CONTEXT] * 2, suggestions)
    for key in ("mu", "sigma"):
        assert torch.allclose(want[key], got[key], atol=1e-5), key
    readme = (out / "README.md").read_text()
    assert "load_reward_model" in readme and "`mu`" in readme and "`sigma`" in readme and "| iid | 10 |" in readme


def test_suggest_scores_each_suggestion_and_keeps_the_best_of_n_panels(exported, reward_folder, monkeypatch,
                                                                         capsys):
    _, _, rm_out, _ = reward_folder
    panels = ["1. Can I grow basil from cuttings?\n2. How often should I water basil?\n3. Does basil need sun?",
              "1. What is basil?\n2. Is basil a herb?"]
    monkeypatch.setattr(suggest_cli, "generate", lambda *a, num_return_sequences=1, **k: panels[:num_return_sequences])
    monkeypatch.setattr(sys, "stdin", io.StringIO(PLAIN))
    assert suggest_cli.main([str(exported), "--reward", str(rm_out), "--samples", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all({"text", "mu", "sigma"} <= set(s) for p in result["panels"] for s in p["suggestions"])
    means = [p["score"] for p in result["panels"]]
    assert result["best"] == means.index(max(means)) and result["suggestions"] == result["panels"][result["best"]][
        "suggestions"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PLAIN))
    assert suggest_cli.main([str(exported), "--reward", str(rm_out), "--samples", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(result["suggestions"])
    assert all(re.match(r"^\d\. .+\t\(μ [+-]\d\.\d{3}, σ \d\.\d{3}\)$", line) for line in lines), lines


def test_a_foreign_folder_fails_in_one_line(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "clicks2pref.export", str(tmp_path / "foreign"), str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [run.stderr.strip()], run.stderr
    assert run.stderr.startswith("error:") and "not a clicks2pref artifact" in run.stderr
    assert not (tmp_path / "o").exists()


def test_damaged_weights_fail_in_one_line_naming_the_file(sft, tmp_path, capsys):
    _, folder, _ = sft
    copy = tmp_path / "sft"
    shutil.copytree(folder, copy)
    weights = copy / "policy" / "adapter_model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(b"\0" * 64)
    assert export_main([str(copy), str(tmp_path / "out"), *TRAINED_WITH]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter_model.safetensors" in err and "manifest" in err
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_is_replaced_only_with_force(reward_folder, tmp_path, capsys):
    _, folder, _, _ = reward_folder
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main([str(folder), str(out)]) == 1
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert export_main([str(folder), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and verify(out) is None
    assert export_main([str(folder), str(folder.parent), "--force"]) == 1  # never over the folder it reads
    assert folder.exists()
