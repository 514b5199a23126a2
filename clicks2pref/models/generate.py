"""Batched sampling from a causal LM on chat prompts."""
from __future__ import annotations

from typing import Hashable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from clicks2pref.config.model import GenerationConfig
from clicks2pref.config.resolvers import interactive
from clicks2pref.models.adapters import merged_adapters
from clicks2pref.models.placement import on_device
from clicks2pref.models.sampling import Sampler, row_uniforms
from clicks2pref.models.shared_prompt import sample_grouped


def chat_inputs(tokenizer, messages: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation with the generation prompt appended."""
    return [tokenizer.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True, return_dict=False)
            for m in messages]


@torch.no_grad()
def generate(model, tokenizer, messages: Sequence[list[dict]], cfg: GenerationConfig,
             num_return_sequences: int = 1, seed: int | None = None, desc: str = "generating",
             keys: Optional[Sequence[Hashable]] = None, first_sample: int = 0) -> list[str]:
    """Completions in input order (grouped per prompt when num_return_sequences > 1).

    Sample j of prompt i (j counted from `first_sample`) draws from its own random stream, seeded by (seed,
    `keys[i]`, j) (`models.sampling.row_uniforms`; `keys` defaults to the prompts' positions): the same prompt key
    and j give the same panel whatever the batch size, the other prompts or the number of samples drawn, and two
    policies' panel j on one key share their random numbers. Without a seed, the streams' seed is drawn from
    torch's global generator. Prompts are sorted by length so each left-padded batch wastes little compute; a
    prompt's samples share its prefill and a finished row leaves the batch (`models.shared_prompt.sample_grouped`).
    A progress bar with an ETA (`desc`) shows at an interactive terminal only.
    """
    ids = chat_inputs(tokenizer, messages)
    keys = list(range(len(ids))) if keys is None else list(keys)
    if len(keys) != len(ids):
        raise ValueError(f"{len(keys)} keys for {len(ids)} prompts")
    n = num_return_sequences
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in ids]
    if seed is None:
        seed = int(torch.randint(2 ** 62, ()).item())
    else:
        torch.manual_seed(seed)  # what runs after sampling draws from a seeded state, as it did before
    model = on_device(model)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    eos = end_of_sequence_ids(model, tokenizer)
    sampler = Sampler(cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p)
    with merged_adapters(model):
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=desc, unit="batch", leave=False,
                          disable=not interactive()):
            batch = order[start:start + cfg.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in batch])
            attention = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch])
            uniforms = row_uniforms(seed, [keys[i] for i in batch for _ in range(n)],
                                    [first_sample + j for _ in batch for j in range(n)], cfg.max_new_tokens) \
                if cfg.do_sample else torch.zeros(len(batch) * n, cfg.max_new_tokens)
            tokens = sample_grouped(model, input_ids.to(model.device), attention.to(model.device), n,
                                    cfg.max_new_tokens, eos, sampler, uniforms)
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
            for j, text in enumerate(texts):
                out[batch[j // n]].append(text.strip())
    model.train(was_training)
    return [t for group in out for t in group]


def end_of_sequence_ids(model, tokenizer) -> list[int]:
    """The tokens that end a completion: the model's generation config's (as `model.generate` stops), else the
    tokenizer's end-of-sequence token."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def group_sampling(cfg) -> GenerationConfig:
    """Generation settings of a GRPO group (`grpo.*` sampling knobs), so logged panels are the ones RL compares."""
    g = cfg.grpo
    return GenerationConfig(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                            top_k=g.top_k, do_sample=True, batch_size=cfg.policy.generation.batch_size)
