"""The token draw: inverse-CDF sampling from the warped distribution that `do_sample=True` samples from, with one
random stream per (prompt key, sample) so that panel j is the same whatever else is drawn beside it."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from clicks2pref.models.generate import GenerationConfig, generate
from clicks2pref.models.registry import ModelConfig, load_causal_lm
from clicks2pref.models.sampling import SampleToken, greedy_kwargs, inverse_cdf_draw, row_uniforms, sampling_kwargs


def test_inverse_cdf_draw_by_hand():
    probs = torch.tensor([[0.1, 0.2, 0.7]] * 4 + [[0.5, 0.0, 0.5]])
    u = torch.tensor([0.05, 0.1, 0.29, 0.95, 0.5])
    # cdf 0.1, 0.3, 1.0: u < 0.1 → 0; 0.1 ≤ u < 0.3 → 1; else 2. A zero-probability entry is skipped.
    assert inverse_cdf_draw(probs, u).tolist() == [0, 1, 1, 2, 2]
    unnormalised = torch.tensor([[1.0, 1.0, 2.0]])  # the total scales u: 0.6 · 4 = 2.4 falls in the third
    assert inverse_cdf_draw(unnormalised, torch.tensor([0.6])).tolist() == [2]


def _warped_by_hand(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """temperature → keep the top_k largest → keep the smallest head whose mass reaches top_p → renormalise."""
    scaled = [x / temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])[:top_k]
    z = sum(math.exp(scaled[i]) for i in order)
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += math.exp(scaled[i]) / z
        if mass >= top_p:
            break
    z = sum(math.exp(scaled[i]) for i in kept)
    return [math.exp(scaled[i]) / z if i in kept else 0.0 for i in range(len(logits))]


def test_sample_token_draws_the_warped_distribution():
    logits = [2.0, 1.5, 1.0, 0.2, -0.5, -1.0]
    expected = _warped_by_hand(logits, temperature=0.7, top_k=4, top_p=0.9)
    assert sum(p > 0 for p in expected) == 3  # top-p cuts inside the top-k
    n = 200_000
    torch.manual_seed(0)
    scores = SampleToken(temperature=0.7, top_k=4, top_p=0.9)(None, torch.tensor([logits]).repeat(n, 1))
    assert torch.isfinite(scores).sum(-1).eq(1).all()  # one finite score per row: the drawn token
    counts = torch.bincount(scores.argmax(-1), minlength=len(logits)).double() / n
    for got, want in zip(counts.tolist(), expected):
        assert got == pytest.approx(want, abs=5 * math.sqrt(0.25 / n)) if want else got == 0.0


def test_sampling_off_switches_leave_the_softmax():
    logits = torch.tensor([[0.3, -0.2, 1.1, 0.0]])
    n = 100_000
    torch.manual_seed(1)
    drawn = SampleToken(temperature=1.0, top_k=0, top_p=1.0)(None, logits.repeat(n, 1)).argmax(-1)
    counts = torch.bincount(drawn, minlength=4).double() / n
    assert torch.allclose(counts, logits.softmax(-1)[0].double(), atol=5 * math.sqrt(0.25 / n))


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)


def test_generate_samples_reproducibly_and_greedy_is_deterministic(tiny):
    model, tok = tiny
    messages = [[{"role": "user", "content": f"question {i}?"}] for i in range(3)]
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, batch_size=2)
    a = generate(model, tok, messages, cfg, num_return_sequences=3, seed=7)
    assert a == generate(model, tok, messages, cfg, num_return_sequences=3, seed=7)
    assert a != generate(model, tok, messages, cfg, num_return_sequences=3, seed=8)
    assert len(set(a[:3])) > 1  # a prompt's samples differ
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False, batch_size=2)
    g = generate(model, tok, messages, greedy, num_return_sequences=2, seed=1)
    assert g[0] == g[1] and g == generate(model, tok, messages, greedy, num_return_sequences=2, seed=2)


def test_sampling_kwargs_take_the_models_own_settings_off(tiny):
    model, tok = tiny
    ids = torch.tensor([[5, 6, 7]])
    kwargs = sampling_kwargs(1.0, 0, 1.0)
    assert kwargs["do_sample"] is False and greedy_kwargs()["do_sample"] is False
    model.generation_config.top_k = 1  # a model config that would make sampling greedy if it applied
    try:
        torch.manual_seed(0)
        outs = {tuple(model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4,
                                     pad_token_id=tok.pad_token_id, **kwargs)[0].tolist()) for _ in range(6)}
    finally:
        model.generation_config.top_k = None
    assert len(outs) > 1


def test_top_k_draws_the_tokens_the_full_vocabulary_warpers_give():
    """The top-k path warps and sums only the k largest scores; for the same uniform numbers it draws the token
    that transformers' temperature → top-k → top-p warpers over the whole vocabulary give."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = torch.randn(512, 3000, generator=torch.Generator().manual_seed(3)) * 4
    warped = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.95)])
    torch.manual_seed(9)
    expected = inverse_cdf_draw(warped(None, scores.clone()).softmax(-1), torch.rand(512))
    torch.manual_seed(9)
    drawn = SampleToken(temperature=0.8, top_k=50, top_p=0.95)(None, scores).argmax(-1)
    assert torch.equal(drawn, expected)
    assert len(set(drawn.tolist())) > 100  # rows draw different tokens, not one fixed index


def test_row_uniforms_are_one_stream_per_key_and_sample():
    a = row_uniforms(3, ["t/f", ("t", "f"), ["t", "f"], "t/f"], [0, 1, 1, 1], 6)
    assert a.shape == (4, 6) and ((a >= 0) & (a < 1)).all()
    assert torch.equal(a[1], a[2])  # a tuple and a list with the same items are one key
    assert not torch.equal(a[0], a[3]) and not torch.equal(a[0], a[1])  # another sample, another key
    assert torch.equal(row_uniforms(3, ["t/f"], [1], 6), a[3:])  # a row's stream is its own, whatever else is drawn
    assert torch.equal(row_uniforms(3, ["t/f"], [1], 9)[:, :6], a[3:])  # and whatever the number of steps
    assert not torch.equal(row_uniforms(4, ["t/f"], [1], 6), a[3:])  # another seed


def _messages(n: int) -> list:
    return [[{"role": "user", "content": f"question {i}? " + "more words " * i}] for i in range(n)]


def test_panel_j_does_not_depend_on_the_batch_or_on_how_many_panels_are_drawn(tiny):
    """Common random numbers: sample j of a prompt key draws the same panel alone or in a batch, as the first of one
    sample or the j-th of three, in any prompt order; so the 1-panel evaluation is column 0 of the 3-panel one."""
    model, tok = tiny
    messages, keys = _messages(5), [["topic", f"facet{i}"] for i in range(5)]
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.8, top_p=0.95, top_k=20, batch_size=2)
    three = generate(model, tok, messages, cfg, num_return_sequences=3, seed=11, keys=keys)
    grid = [three[3 * i:3 * i + 3] for i in range(5)]
    assert all(len(set(row)) > 1 for row in grid)  # a context's panels differ
    one = generate(model, tok, messages, replace(cfg, batch_size=5), num_return_sequences=1, seed=11, keys=keys)
    assert one == [row[0] for row in grid]
    rest = generate(model, tok, messages[::-1], replace(cfg, batch_size=1), num_return_sequences=2, seed=11,
                    keys=keys[::-1], first_sample=1)
    assert [rest[2 * i:2 * i + 2] for i in range(5)][::-1] == [row[1:] for row in grid]
    other = generate(model, tok, messages, cfg, num_return_sequences=1, seed=12, keys=keys)
    assert other != one


def test_two_identical_policies_draw_identical_panels(tiny):
    model, tok = tiny
    twin, twin_tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    messages, keys = _messages(4), [f"context {i}" for i in range(4)]
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, batch_size=3)
    ours = generate(model, tok, messages, cfg, num_return_sequences=2, seed=5, keys=keys)
    assert generate(twin, twin_tok, messages, replace(cfg, batch_size=1), num_return_sequences=2, seed=5,
                    keys=keys) == ours
