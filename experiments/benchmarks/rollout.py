"""Benchmark: sampled tokens per second of our rollout paths against a plain `model.generate` call, at
batch 16 and 64, and each one's share of the CPU's compute limit for the model.

    python experiments/benchmarks/rollout.py [--model smollm2-135m-instruct] [--batches 16 64]
        [--max-new-tokens 32] [--group 1] [--warmup 1] [--reps 3]

Paths, on the same prompts (batch ÷ `--group` distinct GRPO prompts, `--group` completions each: 1 for
SFT-style sampling, G for GRPO's groups and evaluation's k panels per context) and the same policy
(LoRA r=16/α=32 on every linear layer, as GRPO samples from; `--lora-r 0` for the bare model):
  ours   `clicks2pref.models.generate.generate` (length-sorted, left-padded batches; SFT, collect, evaluation);
  grpo   `GRPOModule.sample` (GRPO's rollouts: left-padded, end tokens cut afterwards);
  plain  one `model.generate` call on the left-padded batch in input order (`num_return_sequences` = group).
With a group above 1, ours and grpo prefill each prompt once for its group (`models.shared_prompt`).
Every completion runs to `--max-new-tokens`: end tokens do not stop any path (the model's end token is unset and
GRPO's end-token set emptied), so a batch samples batch × max_new_tokens tokens on every path whatever the text.
Until 2026-12-03 `min_new_tokens` did this, which adds a mask over the whole vocabulary at every step (~25 ms at
batch 64, a sixth of our step) that no real rollout pays.

The limit: `roofline` times a square fp32 matmul (`--matmul-size`) under the same threads and takes
GFLOP/s ÷ (2 × parameters) as tokens/s. Assumption: a sampled token costs 2 FLOPs per parameter (one
multiply-add per weight; the input embedding lookup counted although it is free, attention over the
context ignored) and decoding can run at the large-matmul rate. It is an upper bound: batched decoding
has smaller matmuls than the probe. Each path and batch runs in its own process; see `_common.py`.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from _common import add_common_args, chat_prompts, main_or_side, our_lora, script_path, side_result
from clicks2pref.config.grpo import GRPOConfig
from clicks2pref.models.generate import GenerationConfig, chat_inputs, generate
from clicks2pref.models.registry import ModelConfig, load_causal_lm

PATHS = ("ours", "grpo", "plain")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--group", type=int, default=1, help="completions per prompt; each batch must be a multiple")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--matmul-size", type=int, default=1024, help="n of the n×n fp32 matmul the limit is timed on")
    return ap.parse_args(argv)


def load_policy(args):
    lora = our_lora(args) if args.lora_r > 0 else None
    model, tok = load_causal_lm(ModelConfig(name=args.model, lora=lora), args.cache, seed=args.seed)
    model.generation_config.eos_token_id = None  # every row samples the full length (see the docstring)
    return model.eval(), tok


def sampler(path: str, model, tok, messages: list, args):
    """A no-argument call that samples one batch of `messages` along `path`."""
    if path == "ours":
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               do_sample=True, batch_size=len(messages))
        return lambda: generate(model, tok, messages, cfg, num_return_sequences=args.group)
    if path == "grpo":
        from clicks2pref.lit.grpo_module import GRPOModule  # loads Lightning: the grpo path's process only

        cfg = GRPOConfig(max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                         top_k=0, lora=None)
        module = GRPOModule(model, tok, None, cfg)
        module.eos_ids = set()  # no end token stops sampling (see the docstring)
        return lambda: module.sample(messages, args.group)
    ids = chat_inputs(tok, messages)
    width, pad = max(len(x) for x in ids), tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])

    @torch.no_grad()
    def plain():
        return model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=args.max_new_tokens,
                              do_sample=True, temperature=args.temperature, top_p=args.top_p, pad_token_id=pad,
                              num_return_sequences=args.group)

    return plain


def run_path(path: str, batch: int, args) -> dict:
    torch.manual_seed(args.seed)
    model, tok = load_policy(args)
    if batch % args.group:
        raise SystemExit(f"--batches: {batch} is not a multiple of --group {args.group}")
    messages = [p["messages"] for p in chat_prompts(batch // args.group, args.seed)]
    call = sampler(path, model, tok, messages, args)
    seconds = []
    for _ in range(args.warmup + args.reps):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    reps = seconds[args.warmup:]
    settings = {"model": args.model, "path": path, "batch": batch, "group": args.group,
                "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_p": args.top_p, "lora_r": args.lora_r,
                "params": sum(p.numel() for p in model.parameters()), "warmup": args.warmup,
                "torch_threads": torch.get_num_threads(), "seed": args.seed}
    return side_result(f"{path}@{batch}", reps, [batch * args.max_new_tokens] * len(reps), "tok/s", settings)


def run_roofline(args) -> dict:
    """GFLOP/s of an n×n fp32 matmul under this process's threads: the compute limit's numerator."""
    n = args.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = []
    for _ in range(args.warmup + args.reps):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    reps = seconds[args.warmup:]
    flops = 2 * n ** 3 / 1e9
    return side_result("roofline", reps, [flops] * len(reps), "GFLOP/s",
                       {"matmul_size": n, "dtype": "float32", "torch_threads": torch.get_num_threads()})


def limit_and_shares(results: dict) -> dict:
    """The limit in tokens/s (matmul GFLOP/s ÷ 2·params) and each path's share of it."""
    params = statistics.median(r["settings"]["params"] for s, r in results.items() if s != "roofline")
    limit = results["roofline"]["rate"] * 1e9 / (2 * params)
    return {"limit_tok_s": limit, "limit_assumption": "2 FLOPs per parameter per token at the n×n matmul rate",
            "params": params, "share_of_limit": {s: r["rate"] / limit for s, r in results.items() if s != "roofline"}}


def main() -> None:
    args = parse_args()
    sides = {f"{p}@{b}": functools.partial(run_path, p, b) for b in args.batches for p in PATHS}
    sides["roofline"] = run_roofline
    ratios = {f"{p}@{b}/plain@{b}": (f"{p}@{b}", f"plain@{b}") for b in args.batches for p in PATHS if p != "plain"}
    main_or_side(script_path(__file__), args, sides, ratios, limit_and_shares)


if __name__ == "__main__":
    main()
