"""A group's prompt computed once: the same completions, log-probs and gradients as the full pass; finished rows
leave the sampling loop's batch."""
from __future__ import annotations

import torch

from clicks2pref.models.registry import LoraConfig, ModelConfig, load_causal_lm
from clicks2pref.models.sampling import Sampler, sampling_kwargs
from clicks2pref.models.shared_prompt import generate_grouped, grouped_completion_logps, is_grouped, sample_grouped
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


def _rows_until(seqs, eos: int) -> list[list[int]]:
    """`model.generate` rows cut after their first end-of-sequence token (it pads finished rows to the end)."""
    out = []
    for row in seqs.tolist():
        out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def test_sampling_loop_matches_generate_and_finished_rows_leave_the_batch():
    model, tok = _model()
    model.eval()
    ids, mask = _left_padded(_prompts(model.config.vocab_size), tok.pad_token_id)
    new = 8
    greedy = dict(max_new_tokens=new, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        free = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=[], **greedy)[:, ids.shape[1]:]
    # a token prompt p first draws at a step s > 0 and no other prompt draws by then: p's rows finish at step s + 1,
    # the others later or never
    rows = free.tolist()
    p, s = next((p, s) for s in range(1, new - 1) for p in range(3)
                if rows[p][s] not in rows[p][:s] + [t for q in range(3) if q != p for t in rows[q][:s + 1]])
    eos = rows[p][s]
    with torch.no_grad():
        full = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                              eos_token_id=eos, **greedy)[:, ids.shape[1]:]
    batch_sizes = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda _, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        got = sample_grouped(model, ids, mask, G, new, [eos], Sampler(do_sample=False), torch.zeros(3 * G, new))
    finally:
        hook.remove()
    assert got == _rows_until(full, eos)
    assert all(len(r) == s + 1 for r in got[p * G:(p + 1) * G]) and max(len(r) for r in got) > s + 1
    assert batch_sizes[0] == 3 and batch_sizes[1] == 3 * G  # the prompts once, then every row
    assert batch_sizes[s] == 3 * G and batch_sizes[s + 1] == 2 * G  # p's rows are gone once they drew the token
    assert len(batch_sizes) == max(len(r) for r in got)  # the prefill, then one step per token after the first


def test_a_rows_sample_does_not_depend_on_the_rows_beside_it():
    model, tok = _model()
    model.eval()
    prompts = _prompts(model.config.vocab_size)
    ids, mask = _left_padded(prompts, tok.pad_token_id)
    new, sampler = 7, Sampler(True, temperature=0.9, top_k=0, top_p=0.95)
    uniforms = torch.rand(3 * G, new, generator=torch.Generator().manual_seed(3))
    free = sample_grouped(model, ids, mask, G, new, [], sampler, uniforms)
    eos = [free[0][2], free[G + 1][4]]  # tokens some rows draw midway end them
    batched = sample_grouped(model, ids, mask, G, new, eos, sampler, uniforms)
    assert len({len(r) for r in batched}) > 1  # rows end at different steps
    for p, prompt in enumerate(prompts):  # each prompt alone, unpadded, one row at a time
        for j in range(G):
            alone = sample_grouped(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), 1,
                                   new, eos, sampler, uniforms[p * G + j:p * G + j + 1])
            assert alone[0] == batched[p * G + j]
