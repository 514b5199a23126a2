"""Sampling with LoRA folded into the base weights: the same function, and training resumes from
bit-identical weights."""
from __future__ import annotations

import torch

from clicks2pref.models.adapters import merged_adapters
from clicks2pref.models.registry import LoraConfig, ModelConfig, load_causal_lm


def _trained_lora_model():
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)), "~/.cache/clicks2pref", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero; give the adapters a delta so merging matters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval(), tok


def test_merged_forward_matches_unmerged_and_restores_exact_weights():
    model, _ = _trained_lora_model()
    ids = torch.randint(0, model.config.vocab_size, (3, 11))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with model.disable_adapter():
            bare_with_adapters_off = model(input_ids=ids).logits
        with merged_adapters(model):
            merged = model(input_ids=ids).logits
            base = next(p for n, p in model.named_parameters() if n.endswith("q_proj.base_layer.weight"))
            assert not torch.equal(base, before[next(n for n in before if n.endswith("q_proj.base_layer.weight"))])
    assert not torch.allclose(unmerged, bare_with_adapters_off, atol=1e-4)  # the adapters change the output
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # restored bit for bit, not unmerged with round-off


def test_bare_models_and_errors_inside_the_block_leave_weights_alone():
    bare, _ = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    with merged_adapters(bare) as m:
        assert m is bare
    model, _ = _trained_lora_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        with merged_adapters(model):
            raise RuntimeError("sampling failed")
    except RuntimeError:
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())
