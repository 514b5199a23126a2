"""Groups of completions that share one prompt: the prompt's keys and values computed once per group.

GRPO samples and scores `group_size` completions of every prompt, and the rows of a group differ only
after the prompt. Prompts are most of a row (~116 chat-template tokens against ~40 sampled), so running
each prompt once and repeating its KV cache over the group cuts the prefill, the largest share of the
compute, by the group size, in sampling, in reference log-probs and in the policy's forward and backward
(the repeat is differentiable, so the prompt's gradient is the sum over its group, as in the full pass).

The math is the full pass's: the same tokens, positions and masks, only the prompt's matmuls run at a
smaller batch (float round-off). Rows must come grouped (prompt i's completions at rows i·G … i·G + G − 1,
as `GRPOModule.sample` returns them); `is_grouped` checks it and callers fall back to the full pass.
`shared_prompt_logps` takes any row → prompt index instead (groups of any size, e.g. a perplexity pass over
deduplicated completions).

`sample_grouped` is the sampling loop of `models.generate`: the prompt prefilled once, and a row that ends
leaves the batch, so no forward pass decodes padding after an end-of-sequence token.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from clicks2pref.models.kv_cache import cache_kwarg, preallocated_cache
from clicks2pref.models.logprobs import token_logps


def is_grouped(input_ids: Tensor, width: int, group: int) -> bool:
    """Whether the first `width` columns (the prompts) repeat within each run of `group` rows."""
    if group < 2 or input_ids.shape[0] % group or width < 1:
        return False
    prompts = input_ids[:, :width].reshape(-1, group, width)
    return bool((prompts == prompts[:, :1]).all())


def generation_positions(attention_mask: Tensor) -> Tensor:
    """Position ids as `model.generate` derives them from a left-padded mask (pads at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def generate_grouped(model, input_ids: Tensor, attention_mask: Tensor, group: int, **generate_kwargs) -> Tensor:
    """`model.generate` on each left-padded prompt repeated `group` times (rows grouped per prompt), with
    the prompt prefilled once: all but its last token run at batch = prompts, the cache is repeated over the
    group, and `generate` continues from the last prompt token. Returns prompt + completion ids, as
    `generate` on the repeated batch does. The cache is written in place (`models.kv_cache`), sized for the
    prompt and `max_new_tokens`."""
    rows_ids = input_ids.repeat_interleave(group, 0)
    rows_mask = attention_mask.repeat_interleave(group, 0)
    cache = preallocated_cache(model, input_ids.shape[1] + generate_kwargs.get("max_new_tokens", 0))
    kv = {cache_kwarg(model): cache}
    if group < 2 or input_ids.shape[1] < 2:
        return model.generate(input_ids=rows_ids, attention_mask=rows_mask, **kv, **generate_kwargs)
    head = slice(0, input_ids.shape[1] - 1)
    model(input_ids=input_ids[:, head], attention_mask=attention_mask[:, head],
          position_ids=generation_positions(attention_mask)[:, head], **kv, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(group)
    return model.generate(input_ids=rows_ids, attention_mask=rows_mask, **kv, **generate_kwargs)


def grouped_completion_logps(model, input_ids: Tensor, attention_mask: Tensor, n_completion: int, group: int,
                             temperature: float = 1.0, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """`models.logprobs.completion_logps` for grouped rows (`is_grouped`): the prompt runs once per group.

    The full pass's positions are the column indices (no position ids given), so the prompt pass covers
    columns 0 … width − 1 and the completion pass continues at width; its last prompt position's logits
    predict every row's first completion token.
    """
    width = input_ids.shape[1] - n_completion
    prompt = slice(None, None, group)
    out = model(input_ids=input_ids[prompt, :width], attention_mask=attention_mask[prompt, :width],
                use_cache=True, logits_to_keep=1)
    name = cache_kwarg(model)
    cache = getattr(out, name)
    cache.batch_repeat_interleave(group)
    first = out.logits.repeat_interleave(group, 0)
    rest = model(input_ids=input_ids[:, width:], attention_mask=attention_mask, **{name: cache}, use_cache=True,
                 logits_to_keep=n_completion).logits
    logits = torch.cat([first, rest[:, :-1]], dim=1)  # position t predicts token t + 1
    return token_logps(logits, input_ids[:, width:], temperature, entropy)


def shared_prompt_logps(model, prompt_ids: Tensor, prompt_mask: Tensor, index: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """`models.logprobs.completion_logps` of rows `prompt_ids[index[r]]` + `completion_ids[r]` with each distinct
    prompt run once: prompts (P, W) left-padded, `index` (N,) the prompt of each row, completions (N, L)
    right-padded. Positions are the column indices, as in the full pass of `logprobs.pad_prompt_completion`'s
    rows (prompts at width W), so the values are the full pass's to float round-off. Returns (N, L) log-probs."""
    name = cache_kwarg(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=1)
    cache = getattr(out, name)
    cache.batch_select_indices(index)
    n_completion = completion_ids.shape[1]
    mask = torch.cat([prompt_mask[index], completion_mask], dim=1)
    rest = model(input_ids=completion_ids, attention_mask=mask, **{name: cache}, use_cache=True,
                 logits_to_keep=n_completion).logits
    logits = torch.cat([out.logits[index], rest[:, :-1]], dim=1)  # position t predicts token t + 1
    return token_logps(logits, completion_ids, temperature)[0]


def tail_into_holes(going: Tensor) -> Tensor:
    """The rows to keep, as `batch_select_indices` takes them, when only the rows where `going` is true stay: the
    first n = going.sum() places keep their rows, except finished ones, which take the going rows beyond n. Only
    as many rows move as finished (`models.kv_cache.PreallocatedLayer` copies only rows that move)."""
    n = int(going.sum())
    keep = torch.arange(n, device=going.device)
    keep[(~going[:n]).nonzero().squeeze(1)] = going[n:].nonzero().squeeze(1) + n
    return keep


@torch.no_grad()
def sample_grouped(model, input_ids: Tensor, attention_mask: Tensor, group: int, max_new_tokens: int,
                   eos_ids: Sequence[int], sampler: Callable[[Tensor, Tensor], Tensor], uniforms: Tensor
                   ) -> list[list[int]]:
    """`group` completions of each left-padded prompt (rows grouped per prompt, as in `generate_grouped`): each a
    token list that ends with its first end-of-sequence token (kept) or after `max_new_tokens` tokens.

    The prompts run once (batch = prompts) and their cache is repeated over the group. Each step then runs only the
    rows still decoding: a row that drew an end-of-sequence token leaves the batch with its cache rows, so no
    forward pass is spent on it (`model.generate` decodes finished rows to the end), and only as many cache rows move
    as rows finished (`tail_into_holes`). Row r's token at step t is
    `sampler(logits, uniforms[r, t])` (`models.sampling.Sampler`): what a row draws depends on its own prompt and
    numbers only, never on which rows share its batch. The cache is written in place (`models.kv_cache`).
    """
    rows = input_ids.shape[0] * group
    name = cache_kwarg(model)
    cache = preallocated_cache(model, input_ids.shape[1] + max_new_tokens)
    positions = generation_positions(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **{name: cache},
                   use_cache=True, logits_to_keep=1).logits[:, -1].repeat_interleave(group, 0)
    cache.batch_repeat_interleave(group)
    mask = attention_mask.repeat_interleave(group, 0)
    position = positions[:, -1:].repeat_interleave(group, 0) + 1
    active = torch.arange(rows)  # the rows still decoding, in batch order
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(rows)]
    for step in range(max_new_tokens):
        tokens = sampler(logits, uniforms[active, step])
        for r, t in zip(active.tolist(), tokens.tolist()):
            out[r].append(t)
        going = ~torch.isin(tokens, eos)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # finished rows leave the batch: rows still decoding from its end take their places
            keep = tail_into_holes(going)
            cache.batch_select_indices(keep)
            active, tokens, mask, position = active[keep.cpu()], tokens[keep], mask[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position, **{name: cache},
                       use_cache=True).logits[:, -1]
        position = position + 1
    return out
