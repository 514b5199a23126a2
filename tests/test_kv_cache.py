"""The preallocated KV cache holds what `transformers`' growing cache holds, and sampling through it is unchanged."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from clicks2pref.models.kv_cache import PreallocatedLayer, cache_kwarg, preallocated_cache
from clicks2pref.models.registry import ModelConfig, load_causal_lm
from clicks2pref.models.sampling import sampling_kwargs


def _kv(batch: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=g), torch.randn(batch, 2, length, 4, generator=g)


def _same(a, b) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_layer_matches_the_dynamic_layer_through_growth_repeat_select_and_crop():
    ours, theirs = PreallocatedLayer(capacity=6), DynamicLayer()
    for length, seed in [(5, 0), (1, 1)]:  # a prefill, then one decoding step: fills the buffer
        for layer in (ours, theirs):
            out = layer.update(*_kv(2, length, seed))
        _same(ours, theirs)
        assert torch.equal(out[0], ours.keys)
    ours.batch_repeat_interleave(3)
    theirs.batch_repeat_interleave(3)
    _same(ours, theirs)
    for seed in range(2, 5):  # past the capacity: the buffer grows
        for layer in (ours, theirs):
            layer.update(*_kv(6, 1, seed))
        _same(ours, theirs)
    assert ours.capacity >= 9
    index = torch.tensor([4, 0])
    ours.batch_select_indices(index)
    theirs.batch_select_indices(index)
    _same(ours, theirs)
    ours.crop(-2)
    theirs.crop(-2)
    _same(ours, theirs)
    for layer in (ours, theirs):  # a write after the crop overwrites the dropped positions
        layer.update(*_kv(2, 1, 9))
    _same(ours, theirs)


def test_sampling_through_the_preallocated_cache_gives_generates_tokens():
    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    model.eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    kwargs = dict(max_new_tokens=9, pad_token_id=tok.pad_token_id, **sampling_kwargs(0.9, 20, 0.9))
    with torch.no_grad():
        torch.manual_seed(4)
        expected = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for capacity in (ids.shape[1] + 9, 8):  # sized for the run, and too small (grows mid-run)
            torch.manual_seed(4)
            cache = {cache_kwarg(model): preallocated_cache(model, capacity)}
            got = model.generate(input_ids=ids, attention_mask=mask, **cache, **kwargs)
            assert torch.equal(got, expected)


def test_the_cache_argument_follows_the_installed_transformers():
    """`cache` since transformers renamed `past_key_values`; an older release (a GPU image's) keeps the old name."""
    class Older(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_kwarg(Older()) == "past_key_values"
    model, _ = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    name = cache_kwarg(model)  # the installed release takes it and returns the cache under it
    with torch.no_grad():
        cache = getattr(model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True), name)
        assert cache.get_seq_length() == 3
        assert getattr(model(input_ids=torch.tensor([[8]]), use_cache=True, **{name: cache}), name).get_seq_length() == 4


def test_rows_that_finish_leave_in_place_and_only_the_tail_moves():
    from clicks2pref.models.shared_prompt import tail_into_holes

    going = torch.tensor([True, False, True, False, True, True])  # rows 1 and 3 finished
    keep = tail_into_holes(going)
    assert keep.tolist() == [0, 4, 2, 5]  # rows 4 and 5 take the finished rows' places; 0 and 2 stay
    ours, theirs = PreallocatedLayer(capacity=8), DynamicLayer()
    for layer in (ours, theirs):
        layer.update(*_kv(6, 5, 0))
    buffer = ours._keys.data_ptr()
    for layer in (ours, theirs):
        layer.batch_select_indices(keep)
    _same(ours, theirs)
    assert ours._keys.data_ptr() == buffer  # cut in place, no new buffer
    for layer in (ours, theirs):  # decoding goes on in the kept rows
        layer.update(*_kv(4, 1, 1))
    _same(ours, theirs)
