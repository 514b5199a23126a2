"""A group's prompt computed once: the same completions, log-probs and gradients as the full pass."""
from __future__ import annotations

import torch

from clicks2pref.models.registry import LoraConfig, ModelConfig, load_causal_lm
from clicks2pref.models.sampling import sampling_kwargs
from clicks2pref.models.shared_prompt import generate_grouped, grouped_completion_logps, is_grouped
from clicks2pref.models.logprobs import completion_logps, pad_prompt_completion

G = 3


def _model():
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama", lora=LoraConfig(r=4, lora_dropout=0.0)),  # GRPO: no dropout
                               "~/.cache/clicks2pref", seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter delta, so the prompt's gradient reaches the adapters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tok


def _prompts(vocab: int):
    g = torch.Generator().manual_seed(1)
    lengths = [9, 5, 7]  # left padding in two of the three prompts
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _left_padded(prompts, pad):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_grouped_sampling_matches_generate_on_the_repeated_batch():
    model, tok = _model()
    model.eval()
    ids, mask = _left_padded(_prompts(model.config.vocab_size), tok.pad_token_id)
    kwargs = dict(max_new_tokens=6, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        full = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                              **kwargs)
    shared = generate_grouped(model, ids, mask, G, **kwargs)
    assert torch.equal(shared, full)
    kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)  # sampling draws the same random numbers
    torch.manual_seed(5)
    with torch.no_grad():
        full = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                              **kwargs)
    torch.manual_seed(5)
    shared = generate_grouped(model, ids, mask, G, **kwargs)
    assert torch.equal(shared, full)
    assert len({tuple(r) for r in shared[:, ids.shape[1]:].tolist()}) > 1  # the group's samples differ
    kwargs.update(sampling_kwargs(temperature=0.8, top_k=0, top_p=0.95))  # the project's sampler
    torch.manual_seed(6)
    with torch.no_grad():
        full = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                              **kwargs)
    torch.manual_seed(6)
    assert torch.equal(generate_grouped(model, ids, mask, G, **kwargs), full)


def test_grouped_logps_and_gradients_match_the_full_pass():
    model, tok = _model()
    model.train()
    prompts = [p for p in _prompts(model.config.vocab_size) for _ in range(G)]
    g = torch.Generator().manual_seed(2)
    completions = [torch.randint(3, model.config.vocab_size, (int(n),), generator=g).tolist()
                   for n in torch.randint(1, 6, (len(prompts),), generator=g)]
    ids, attention, mask = pad_prompt_completion(prompts, completions, tok.pad_token_id)
    n = mask.shape[1]
    assert is_grouped(ids, ids.shape[1] - n, G) and not is_grouped(ids, ids.shape[1] - n, 2)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run(fn, *args):
        model.zero_grad()
        logps, ent = fn(model, ids, attention, n, *args, temperature=0.7, entropy=True)
        ((logps * mask).sum() / mask.sum()).backward()
        return logps.detach(), ent, [p.grad.clone() for p in trainable]

    full, full_ent, full_grads = run(completion_logps)
    shared, shared_ent, shared_grads = run(grouped_completion_logps, G)
    torch.testing.assert_close(shared * mask, full * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_ent * mask, full_ent * mask, rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in full_grads)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
