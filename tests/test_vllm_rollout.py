"""vLLM rollouts: the weights pushed into the engine are the policy's with LoRA folded in, under the plain
checkpoint's names; on a GPU with vllm installed, the engine's greedy tokens are the trained model's."""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from clicks2pref.errors import ConfigError
from clicks2pref.models.adapters import merged_adapters
from clicks2pref.models.registry import ModelConfig, load_causal_lm
from clicks2pref.models.vllm_rollout import VLLMRollout, vllm_named_weights
from clicks2pref.__main__ import run_stage
from tests.conftest import compose_config


def _policy(hidden: int = 64, heads: int = 4, seed: int = 0):
    """A tiny Llama with GRPO-style LoRA on every linear layer, its B factors random (the update is non-zero)."""
    cfg = ModelConfig(name="tiny-llama", tiny_hidden_size=hidden, tiny_num_heads=heads,
                      tiny_intermediate_size=2 * hidden)
    base, tok = load_causal_lm(cfg, "~/.cache/clicks2pref", seed=seed)
    lora = PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, lora)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model, tok


def test_pushed_weights_are_the_merged_policy_under_the_checkpoints_names():
    model, _ = _policy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with merged_adapters(model):
        pushed = {name: tensor.clone() for name, tensor in vllm_named_weights(model)}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # training weights untouched
    merged = model.merge_and_unload()
    expected = dict(merged.named_parameters())
    assert pushed.keys() == expected.keys()
    assert not any("lora" in n or "base_layer" in n for n in pushed)
    for name, tensor in expected.items():
        torch.testing.assert_close(pushed[name], tensor.detach(), rtol=0, atol=1e-6)
    changed = [n for n in pushed if "q_proj" in n]
    assert changed and not torch.equal(pushed[changed[0]], before[f"base_model.model.{changed[0]}".replace(
        ".weight", ".base_layer.weight")])  # the adapters' update is in the pushed weights


def test_a_policy_without_adapters_is_pushed_as_it_is():
    base, _ = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    assert {n for n, _ in vllm_named_weights(base)} == {n for n, _ in base.named_parameters()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error a CPU-only machine gives")
def test_without_a_gpu_the_switch_fails_with_one_line_naming_it():
    model, _ = _policy()
    with pytest.raises(ConfigError, match="grpo.use_vllm.*CUDA"):
        VLLMRollout(model, 0.3, None, seed=0)


def test_a_quantised_policy_is_refused_with_one_line_naming_the_switch(tmp_path):
    base, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    base.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = load_causal_lm(ModelConfig(name=str(tmp_path), quantization="4bit"), "~/.cache/clicks2pref", seed=0)
    with pytest.raises(ConfigError, match="grpo.use_vllm.*unquantised"):
        VLLMRollout(model, 0.3, None, seed=0)


def test_several_training_processes_are_refused_before_any_work(tmp_path):
    cfg = compose_config(["experiment=smoke", "stage=grpo", "trainer=ddp_cpu", "grpo.use_vllm=true",
                          f"paths.artifacts_dir={tmp_path / 'artifacts'}"], tmp_path)
    with pytest.raises(ConfigError, match="grpo.use_vllm.*devices=2"):
        run_stage(cfg)
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM rollouts need a CUDA GPU")
def test_the_engines_greedy_tokens_follow_the_trained_weights(tmp_path):
    pytest.importorskip("vllm")
    model, tok = _policy(hidden=256, heads=4)  # head size 64: every vLLM attention backend takes it
    model.get_base_model().save_pretrained(tmp_path)  # the engine's starting point; sync replaces its weights
    model.get_base_model().name_or_path = str(tmp_path)
    model = model.cuda().eval()
    rollout = VLLMRollout(model, gpu_memory_utilization=0.2, max_model_length=128, seed=0)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, model.config.vocab_size, (length,), generator=g).tolist() for length in (5, 9)]
    end = {tok.eos_token_id}

    def transformers_greedy():
        out = []
        with merged_adapters(model), torch.no_grad():
            for p in prompts:
                ids = model.generate(input_ids=torch.tensor([p], device="cuda"), do_sample=False, max_new_tokens=8,
                                     eos_token_id=sorted(end), pad_token_id=tok.pad_token_id)
                out.append(ids[0, len(p):].tolist())
        return out

    for version in (0, 1):
        rollout.sync(model, version)
        completions, ended = rollout.generate(prompts, 1, max_tokens=8, end_ids=end, greedy=True)
        assert completions == transformers_greedy()
        assert ended == [bool(c) and c[-1] in end for c in completions]
        with torch.no_grad():  # an optimiser step's worth of change before the next version
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.05)
