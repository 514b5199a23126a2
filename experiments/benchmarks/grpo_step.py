"""Benchmark: completions per second of one GRPO step (sample → reference log-probs → reward → advantages →
one optimiser step) of our `GRPOModule` against `trl.GRPOTrainer`, on the same model, prompts, LoRA
adapters and reward.

    python experiments/benchmarks/grpo_step.py [--model smollm2-135m-instruct] [--prompts 2] [--group-size 4]
        [--max-completion-length 32] [--warmup 1] [--reps 3]

Ours runs as the GRPO stage runs it: `GRPOModule` inside a Lightning `Trainer.fit` (CPU, fp32, no logger,
no checkpoints), timed per training batch by a callback. TRL's steps are timed by a `TrainerCallback`
(`on_step_begin` → `on_step_end`), so neither side's setup counts. Matched: LoRA r=16/α=32 on every linear
layer with adapters disabled as the reference, num_generations G, prompts per step, max_completion_length,
temperature, top_p=1, top_k off, β, ε, token-level loss (ours `token` ↔ TRL `bnpo`), group-scaled
advantages, AdamW at a constant learning rate, one optimiser step per generation batch, the whole batch in
one forward, no gradient checkpointing, fp32. By default every completion runs to max_completion_length on
both sides (`min_new_tokens`), so both do the same work whatever the sampled text; `--natural-length` lets
completions end at the end-of-turn token. Each side runs in its own process; see `_common.py`.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from _common import (add_common_args, chat_prompts, lightning_timer, lightning_trainer, main_or_side, our_lora,
                     peft_lora, question_reward, script_path, side_result, timed, trl_timer)
from clicks2pref.config.grpo import GRPOConfig
from clicks2pref.models.registry import ModelConfig, load_causal_lm
from clicks2pref.rewards.composite import CompositeReward


def add_grpo_args(ap: argparse.ArgumentParser) -> None:
    """GRPO's settings (shared with scaling.py, which sweeps group size and completion length)."""
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=4, help="completions per prompt (TRL num_generations)")
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--pool", type=int, default=64, help="distinct prompts the steps draw from")
    ap.add_argument("--natural-length", action="store_true", help="let completions stop at the end token")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="sequences per forward (default: the whole batch, as TRL's side)")
    ap.add_argument("--num-iterations", type=int, default=1, help="optimiser steps per batch of samples (μ)")
    ap.add_argument("--reward-models", action="store_true",
                    help="ours: add a GaRM and a BTRM (LoRA on the same backbone, saved and loaded as the "
                         "GRPO stage loads them) to the reward, each scoring three slices of every completion")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    add_grpo_args(ap)
    ap.add_argument("--base-tree", default=None,
                    help="a checkout of an earlier commit (`git worktree add`): time our side on its code "
                         "(PYTHONPATH) against ours, alternating, instead of against TRL")
    ap.add_argument("--pairs", type=int, default=2, help="with --base-tree: base/ours process pairs, alternating")
    return ap.parse_args(argv)


def against_base(args) -> dict:
    """Our side on the code of `--base-tree` and on this tree, in alternating fresh processes (base, ours,
    base, ours, …); each side's rate is the median over all its timed steps. Prints every process's line,
    then one line with the ratio ours/base of the median step seconds."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    from _common import OFFLINE, emit, parent_argv

    base_tree = os.path.abspath(os.path.expanduser(args.base_tree))
    commit = subprocess.run(["git", "-C", base_tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    argv = [a for a in parent_argv(sys.argv[1:])]
    drop = {"--base-tree", "--pairs"}
    argv = [a for i, a in enumerate(argv) if a not in drop and (i == 0 or argv[i - 1] not in drop)]
    seconds = {"base": [], "ours": []}
    lines = []
    for _ in range(args.pairs):
        for side in ("base", "ours"):
            env = {**os.environ, **OFFLINE}
            if side == "base":
                env["PYTHONPATH"] = base_tree + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [sys.executable, script_path(__file__), *argv, "--side", "ours", "--json"]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
            out = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode != 0 or not out:
                raise SystemExit(f"side {side!r} failed (exit {done.returncode}): {' '.join(cmd)}")
            line = {**out[-1], "side": side, "code": commit if side == "base" else "this tree"}
            emit(line)
            lines.append(line)
            seconds[side] += line["seconds"]
    med = {k: statistics.median(v) for k, v in seconds.items()}
    work = args.prompts * args.group_size
    summary = {"median_seconds": med, "rate": {k: work / v for k, v in med.items()},
               "ratio": {"ours/base": med["base"] / med["ours"]}, "base_commit": commit,
               "peak_rss_mb": {k: max(x["peak_rss_mb"] for x in lines if x["side"] == k) for k in med}}
    emit(summary)
    return summary


def settings(args, group_size: int, length: int) -> dict:
    return {"model": args.model, "prompts_per_step": args.prompts, "group_size": group_size,
            "micro_batch_size": args.micro_batch or args.prompts * group_size, "num_iterations": args.num_iterations,
            "reward_models": args.reward_models,
            "max_completion_length": length, "fixed_length": not args.natural_length,
            "temperature": args.temperature, "beta": args.beta, "learning_rate": args.learning_rate,
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "targets": "all linear"},
            "warmup": args.warmup, "torch_threads": torch.get_num_threads(), "seed": args.seed}


def questions(batch) -> torch.Tensor:
    """Our reward component: `question_reward` of each completion (a `CompositeReward` component)."""
    return torch.tensor([question_reward(t) for t in batch.completions], dtype=torch.float64)


def module_config(args, group_size: int, length: int) -> GRPOConfig:
    """Our GRPO knobs for these settings: the whole generation batch in one forward, as TRL with
    per_device_train_batch_size = prompts × G does."""
    return GRPOConfig(group_size=group_size, prompts_per_step=args.prompts, max_completion_length=length,
                      temperature=args.temperature, top_p=1.0, top_k=0, beta=args.beta, epsilon=args.epsilon,
                      loss_type="token", scale_rewards="group", learning_rate=args.learning_rate,
                      lr_scheduler="constant", max_grad_norm=args.max_grad_norm,
                      micro_batch_size=args.micro_batch or args.prompts * group_size,
                      num_iterations=args.num_iterations, log_completions_every=0, lora=None)


def fix_length(model, length: int, natural: bool) -> None:
    """Every sampled completion runs to `length` tokens (the end token is suppressed until then)."""
    model.generation_config.min_new_tokens = None if natural else length


SLICES = 3  # suggestions a reward model scores per completion (a panel's k)


def reward_model_components(args, folder) -> dict:
    """A GaRM and a BTRM on the policy's backbone with LoRA (adapters moved off their initial values), saved
    and loaded back as the GRPO stage loads its frozen reward models. Each scores every completion cut into
    `SLICES` equal pieces (the same number of suggestions whatever the sampled text), through the shared-
    conversation pass the stage uses (`rm_outputs`), the panel's reward being their mean head output."""
    from pathlib import Path

    from clicks2pref.models.reward_heads import HeadConfig, build_reward_model, load_reward_model, save_reward_model
    from clicks2pref.models.shared_prefix import rm_outputs

    components = {}
    for kind in ("garm", "btrm"):
        backbone = ModelConfig(name=args.model, lora=our_lora(args))
        model = build_reward_model(kind, backbone, HeadConfig(), args.cache, seed=args.seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn_like(p))
        save_reward_model(model, Path(folder) / kind, backbone, seed=args.seed)
        loaded = load_reward_model(Path(folder) / kind, args.cache)

        def score(batch, model=loaded):
            cuts = [[t[i * len(t) // SLICES:(i + 1) * len(t) // SLICES] or "?" for i in range(SLICES)]
                    for t in batch.completions]
            out = rm_outputs(model, [c for c in batch.contexts for _ in range(SLICES)],
                             [s for cut in cuts for s in cut], batch_size=32)
            first = next(iter(out.values())).double()
            return first.view(len(cuts), SLICES).mean(1)

        components[kind] = score
    return components


def run_module(model, tok, items: list[dict], cfg: GRPOConfig, steps: int, seed: int, extra: dict | None = None
               ) -> tuple[list[float], float]:
    """`steps` GRPO steps of `GRPOModule` under a minimal Lightning Trainer, as the stage's `fit` runs them:
    each step's seconds, and the last step's mean completion length."""
    from clicks2pref.lit.grpo_module import GRPOModule, prompt_loader  # loads Lightning: our side only

    components = {"questions": questions, **(extra or {})}
    module = GRPOModule(model, tok, CompositeReward(components, {name: 1.0 for name in components}), cfg,
                        total_steps=steps * cfg.num_iterations)
    timer = lightning_timer()
    trainer = lightning_trainer(steps * cfg.num_iterations, [timer])  # max_steps counts optimiser steps
    trainer.fit(module, prompt_loader(items, cfg.prompts_per_step, steps, seed))
    return timer.seconds, float(trainer.callback_metrics["grpo/completion_len"])


def run_ours(args) -> dict:
    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(ModelConfig(name=args.model, lora=our_lora(args)), args.cache, seed=args.seed)
    fix_length(model, args.max_completion_length, args.natural_length)
    cfg = module_config(args, args.group_size, args.max_completion_length)
    with tempfile.TemporaryDirectory() as folder:
        extra = reward_model_components(args, folder) if args.reward_models else None
        seconds, length = run_module(model, tok, chat_prompts(args.pool, args.seed), cfg, args.warmup + args.reps,
                                     args.seed, extra)
    reps = timed(seconds, args.warmup)
    out = settings(args, args.group_size, args.max_completion_length)
    import clicks2pref

    out.update(driver="lightning Trainer.fit", mean_completion_len=length, code=str(clicks2pref.__file__))
    return side_result("ours", reps, [args.prompts * args.group_size] * len(reps), "completions/s", out)


def trl_questions(completions, **kwargs) -> list[float]:
    """TRL's reward function: the same `question_reward` (conversational completions are message lists)."""
    return [question_reward(c[-1]["content"] if isinstance(c, list) else c) for c in completions]


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig, GRPOTrainer  # loads TRL: the baseline's process only

    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(ModelConfig(name=args.model, lora=None), args.cache, seed=args.seed)
    dataset = Dataset.from_list([{"prompt": i["messages"]} for i in chat_prompts(args.pool, args.seed)])
    G, L, steps = args.group_size, args.max_completion_length, args.warmup + args.reps
    timer = trl_timer()
    with tempfile.TemporaryDirectory() as out_dir:
        config = TRLConfig(
            output_dir=out_dir, report_to="none", use_cpu=True, save_strategy="no", bf16=False, fp16=False,
            gradient_checkpointing=False, optim="adamw_torch", per_device_train_batch_size=args.prompts * G,
            gradient_accumulation_steps=1, num_generations=G, max_completion_length=L,
            temperature=args.temperature, top_p=1.0, top_k=0, beta=args.beta, epsilon=args.epsilon,
            loss_type="bnpo", scale_rewards="group", learning_rate=args.learning_rate, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=args.max_grad_norm, max_steps=steps, logging_steps=1,
            disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
            generation_kwargs=None if args.natural_length else {"min_new_tokens": L})
        trainer = GRPOTrainer(model=model, reward_funcs=trl_questions, args=config, train_dataset=dataset,
                              processing_class=tok, callbacks=[timer], peft_config=peft_lora(args, "CAUSAL_LM"))
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    reps = timed(timer.seconds, args.warmup)
    out = settings(args, G, L)
    out.update(driver="trl.GRPOTrainer.train", mean_completion_len=lengths[-1] if lengths else None)
    return side_result("trl", reps, [args.prompts * G] * len(reps), "completions/s", out)


def main() -> None:
    args = parse_args()
    if args.base_tree and args.side is None:
        against_base(args)
        return
    main_or_side(script_path(__file__), args, {"ours": run_ours, "trl": run_trl}, {"ours/trl": ("ours", "trl")})


if __name__ == "__main__":
    main()
