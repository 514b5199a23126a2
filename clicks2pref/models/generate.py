"""Batched sampling from a causal LM on chat prompts."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from clicks2pref.config.model import GenerationConfig
from clicks2pref.config.resolvers import interactive
from clicks2pref.models.adapters import merged_adapters
from clicks2pref.models.placement import on_device
from clicks2pref.models.sampling import greedy_kwargs, sampling_kwargs
from clicks2pref.models.shared_prompt import generate_grouped


def chat_inputs(tokenizer, messages: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation with the generation prompt appended."""
    return [tokenizer.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True, return_dict=False)
            for m in messages]


@torch.no_grad()
def generate(model, tokenizer, messages: Sequence[list[dict]], cfg: GenerationConfig,
             num_return_sequences: int = 1, seed: int | None = None, desc: str = "generating") -> list[str]:
    """Completions in input order (grouped per prompt when num_return_sequences > 1).

    Prompts are sorted by length so each left-padded batch wastes little compute; a prompt's
    `num_return_sequences` samples share its prefill (`models.shared_prompt`). A progress bar with an ETA
    (`desc`) shows at an interactive terminal only.
    """
    ids = chat_inputs(tokenizer, messages)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in ids]
    if seed is not None:
        torch.manual_seed(seed)
    model = on_device(model)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    with merged_adapters(model):
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=desc, unit="batch", leave=False,
                          disable=not interactive()):
            batch = order[start:start + cfg.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in batch])
            attention = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch])
            kwargs = sampling_kwargs(cfg.temperature, cfg.top_k, cfg.top_p) if cfg.do_sample else greedy_kwargs()
            seqs = generate_grouped(model, input_ids.to(model.device), attention.to(model.device),
                                    num_return_sequences, max_new_tokens=cfg.max_new_tokens, pad_token_id=pad,
                                    **kwargs)
            texts = tokenizer.batch_decode(seqs[:, width:], skip_special_tokens=True)
            for j, text in enumerate(texts):
                out[batch[j // num_return_sequences]].append(text.strip())
    model.train(was_training)
    return [t for group in out for t in group]


def group_sampling(cfg) -> GenerationConfig:
    """Generation settings of a GRPO group (`grpo.*` sampling knobs), so logged panels are the ones RL compares."""
    g = cfg.grpo
    return GenerationConfig(max_new_tokens=g.max_completion_length, temperature=g.temperature, top_p=g.top_p,
                            top_k=g.top_k, do_sample=True, batch_size=cfg.policy.generation.batch_size)
