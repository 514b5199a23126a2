"""Benchmark: how our GRPO step time grows with the group size G and with the completion length, each
swept with the other fixed.

    python experiments/benchmarks/scaling.py [--model smollm2-135m-instruct] [--groups 2 4 8 16]
        [--lengths 16 32 64 128] [--group-size 4] [--max-completion-length 32] [--warmup 1] [--reps 3]

One step is what `grpo_step.py` times for our side (sample → reference → reward → update, `GRPOModule` under
a minimal Lightning Trainer, the whole batch in one forward, every completion run to the full length).
Each point runs in its own process; one JSON line per point, then per sweep: the least-squares line
(seconds per unit of G or per token, intercept, R²) and the exponent k of seconds ∝ x^k fitted on logs.
k near 1 is linear growth; below, the step's fixed cost still dominates; above, something grows faster
than the work (attention over longer sequences, memory).
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics

import torch

from _common import add_common_args, chat_prompts, main_or_side, our_lora, script_path, side_result, timed
from clicks2pref.models.registry import ModelConfig, load_causal_lm
from grpo_step import add_grpo_args, fix_length, module_config, run_module, settings


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    add_grpo_args(ap)  # --group-size and --max-completion-length: the fixed value during the other sweep
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--linear-tolerance", type=float, default=0.15, help="|k − 1| below which growth is linear")
    return ap.parse_args(argv)


def points(args) -> list[tuple[int, int]]:
    """(G, length) of both sweeps, the shared point once."""
    sweep = [(g, args.max_completion_length) for g in args.groups] + [(args.group_size, n) for n in args.lengths]
    return list(dict.fromkeys(sweep))


def run_point(group_size: int, length: int, args) -> dict:
    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(ModelConfig(name=args.model, lora=our_lora(args)), args.cache, seed=args.seed)
    fix_length(model, length, args.natural_length)
    seconds, mean_len = run_module(model, tok, chat_prompts(args.pool, args.seed),
                                   module_config(args, group_size, length), args.warmup + args.reps, args.seed)
    reps = timed(seconds, args.warmup)
    out = settings(args, group_size, length)
    out.update(driver="lightning Trainer.fit", mean_completion_len=mean_len)
    return side_result(f"G{group_size}_L{length}", reps, [args.prompts * group_size] * len(reps), "completions/s", out)


def fit(xs: list[float], ys: list[float], tolerance: float) -> dict:
    """Line y = a + b·x (least squares) with its R², and the exponent k of y ∝ x^k (least squares on logs)."""
    if len(set(xs)) < 2:
        return {"points": len(xs)}
    slope, intercept = statistics.linear_regression(xs, ys)
    r2 = statistics.correlation(xs, ys) ** 2 if len(set(ys)) > 1 else 1.0
    k, _ = statistics.linear_regression([math.log(x) for x in xs], [math.log(y) for y in ys])
    growth = "linear" if abs(k - 1) <= tolerance else ("sub-linear" if k < 1 else "super-linear")
    return {"points": len(xs), "slope_seconds": slope, "intercept_seconds": intercept, "r2": r2, "exponent": k,
            "growth": growth}


def sweeps(args, results: dict) -> dict:
    by_point = {(r["settings"]["group_size"], r["settings"]["max_completion_length"]): r["median_seconds"]
                for r in results.values()}
    g_sweep = [(g, by_point[(g, args.max_completion_length)]) for g in args.groups]
    l_sweep = [(n, by_point[(args.group_size, n)]) for n in args.lengths]
    return {"group_size": {"at_length": args.max_completion_length,
                           **fit([g for g, _ in g_sweep], [s for _, s in g_sweep], args.linear_tolerance)},
            "completion_length": {"at_group_size": args.group_size,
                                  **fit([n for n, _ in l_sweep], [s for _, s in l_sweep], args.linear_tolerance)}}


def main() -> None:
    args = parse_args()
    sides = {f"G{g}_L{n}": functools.partial(run_point, g, n) for g, n in points(args)}
    main_or_side(script_path(__file__), args, sides, {}, functools.partial(sweeps, args))


if __name__ == "__main__":
    main()
