"""Benchmark: panels per second of `models.generate` (length-sorted, left-padded batches) against
the baseline of one `model.generate` call per prompt, on the same SmolLM2 and the same contexts.

    python experiments/benchmarks/generation.py [--n 24] [--batch-size 24] [--max-new-tokens 56]

Prints both rates and the ratio. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.data.simulator import load_world
from clicks2pref.data.simulator.world import context_messages
from clicks2pref.models.generate import GenerationConfig, chat_inputs, generate
from clicks2pref.models.registry import ModelConfig, load_causal_lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=56)
    ap.add_argument("--cache", default="~/.cache/clicks2pref")
    args = ap.parse_args()

    model, tok = load_causal_lm(ModelConfig(), args.cache)
    rng = random.Random(0)
    world = list(load_world().values())
    template = PromptTemplate()
    messages = []
    for _ in range(args.n):
        topic = rng.choice(world)
        messages.append(build_messages(template, context_messages(topic, rng.choice(topic.facets), rng)))
    # Greedy with a fixed length so both sides do the same work.
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, batch_size=args.batch_size)
    generate(model, tok, messages[:2], GenerationConfig(max_new_tokens=4, do_sample=False))  # warm-up

    start = time.perf_counter()
    generate(model, tok, messages, cfg)
    batched = args.n / (time.perf_counter() - start)

    start = time.perf_counter()
    with torch.no_grad():
        for ids in chat_inputs(tok, messages):
            model.generate(input_ids=torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    sequential = args.n / (time.perf_counter() - start)

    print(f"baseline (one generate call per prompt): {sequential:.2f} panels/s")
    print(f"models.generate (batch {args.batch_size}):          {batched:.2f} panels/s")
    print(f"ratio: {batched / sequential:.2f}x")


if __name__ == "__main__":
    main()
