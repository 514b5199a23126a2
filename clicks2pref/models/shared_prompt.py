"""Groups of completions that share one prompt: the prompt's keys and values computed once per group.

GRPO samples and scores `group_size` completions of every prompt, and the rows of a group differ only
after the prompt. Prompts are most of a row (~116 chat-template tokens against ~40 sampled), so running
each prompt once and repeating its KV cache over the group cuts the prefill, the largest share of the
compute, by the group size, in sampling, in reference log-probs and in the policy's forward and backward
(the repeat is differentiable, so the prompt's gradient is the sum over its group, as in the full pass).

The math is the full pass's: the same tokens, positions and masks, only the prompt's matmuls run at a
smaller batch (float round-off). Rows must come grouped (prompt i's completions at rows i·G … i·G + G − 1,
as `GRPOModule.sample` returns them); `is_grouped` checks it and callers fall back to the full pass.
"""
from __future__ import annotations

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
