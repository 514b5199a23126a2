"""Benchmark: preference pairs per second of reward-model training. Our BTRM (`RewardModule` on a LoRA
backbone + linear head) against `trl.RewardTrainer` (`AutoModelForSequenceClassification` from the same
weights, the same LoRA) on the same pairs; our GaRM against our BTRM, which prices the σ head and
the probit likelihood; and our BTRM against itself with every (conversation, suggestion) input run in
full (`reward_model.shared_prefix=false`), which prices the shared conversation.

    python experiments/benchmarks/reward_training.py [--model smollm2-135m-instruct] [--groups-per-batch 4]
        [--users-per-panel 24] [--warmup 1] [--reps 3]

The pairs are built as the rm stage builds them (`clicks2pref.data.pairs.build_pairs`, clicked ≻ skipped
above) from synthetic impressions: each panel shows three questions from the packaged world after a
logged conversation, to `--users-per-panel` users who each click one position or none, uniformly. A batch
is `--groups-per-batch` whole panels, as the stage's `pair_loader` makes it; our model scores each distinct
suggestion of a batch once, TRL runs the chosen and the rejected text of every pair. TRL's batch is the
same number of pairs on average (`--trl-batch` sets it), run as gradient accumulation over micro-batches of
`--trl-micro-batch` pairs: the whole batch in one forward (2 × ~72 sequences of up to 256 tokens) keeps
every activation for the backward and outgrows a 24 GB machine, which is how a user would run it too. The
optimiser step is one either way. Ours runs under a minimal Lightning
`Trainer.fit` as the stage does; both are timed per optimiser step (forward, backward, clip, AdamW), data
loading excluded. Matched: backbone weights, LoRA r=16/α=32 on every linear layer, max input length,
fp32, no gradient checkpointing, gradient clipping at 1, AdamW with a linear decay. Not matched: our head
has its own learning rate (TRL trains its `score` head at the adapters' rate). Each side runs in its own
process; see `_common.py`.
"""
from __future__ import annotations

import argparse
import random
import tempfile

import torch

from _common import (add_common_args, lightning_timer, lightning_trainer, main_or_side, our_lora, peft_lora,
                     script_path, side_result, timed, trl_timer)
from clicks2pref.data.pairs import build_pairs, group_pairs
from clicks2pref.data.simulator import load_world
from clicks2pref.data.simulator.world import context_messages
from clicks2pref.models.registry import TINY_LLAMA, ModelConfig, load_tokenizer, resolve, tiny_llama


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--groups-per-batch", type=int, default=4, help="panels per batch (reward_model.optim)")
    ap.add_argument("--users-per-panel", type=int, default=24, help="as collect.users_per_panel")
    ap.add_argument("--suggestions", type=int, default=3, help="suggestions per panel")
    ap.add_argument("--panels", type=int, default=64, help="panels the pairs come from")
    ap.add_argument("--unique-pairs", action="store_true", help="drop repeated (context, chosen, rejected) pairs")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per (context, suggestion) input")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--trl-batch", type=int, default=None, help="TRL pairs per step; default: ours on average")
    ap.add_argument("--trl-micro-batch", type=int, default=8,
                    help="TRL pairs per forward (per_device_train_batch_size); the step accumulates up to --trl-batch")
    return ap.parse_args(argv)


def click_pairs(args) -> list[dict]:
    """Pairs from synthetic impressions, as the rm stage builds them from click logs."""
    rng = random.Random(args.seed)
    world = list(load_world().values())
    questions = sorted({q for t in world for f in t.facets for q in f.questions})
    records = []
    for p in range(args.panels):
        topic = rng.choice(world)
        context = context_messages(topic, rng.choice(topic.facets), rng)
        suggestions = rng.sample(questions, args.suggestions)
        for u in range(args.users_per_panel):
            click = rng.randrange(args.suggestions + 1)  # == suggestions: no click
            records.append({"context": context, "suggestions": suggestions, "impression_id": f"{p}-{u}",
                            "clicks": [i == click for i in range(args.suggestions)], "week": 1,
                            "policy": "benchmark", "panel_id": str(p)})
    pairs = build_pairs(records, "skip_above")
    if args.unique_pairs:
        seen = {}
        for q in pairs:
            seen.setdefault((q["group"], q["chosen"], q["rejected"]), q)
        pairs = list(seen.values())
    return pairs


def pairs_per_batch(args, pairs: list[dict]) -> int:
    """Our mean pairs per batch of `groups_per_batch` panels: TRL's batch unless --trl-batch is given."""
    if args.trl_batch is not None:
        return args.trl_batch
    return max(1, round(len(pairs) / len(group_pairs(pairs)) * args.groups_per_batch))


def settings(args, pairs: list[dict]) -> dict:
    return {"model": args.model, "pairs": len(pairs), "panels": len(group_pairs(pairs)),
            "groups_per_batch": args.groups_per_batch, "trl_pairs_per_step": pairs_per_batch(args, pairs),
            "users_per_panel": args.users_per_panel, "unique_pairs": args.unique_pairs,
            "max_length": args.max_length, "lora": {"r": args.lora_r, "alpha": args.lora_alpha,
                                                     "dropout": args.lora_dropout, "targets": "all linear"},
            "warmup": args.warmup, "torch_threads": torch.get_num_threads(), "seed": args.seed}


def run_ours(args, kind: str, shared_prefix: bool = True) -> dict:
    """Our reward model of `kind` trained by `RewardModule` under a minimal Lightning Trainer; with
    `shared_prefix` (the stage's default) each distinct conversation of a batch runs once."""
    from clicks2pref.config.reward_model import RewardLossConfig, RewardOptimConfig  # Lightning: our side only
    from clicks2pref.lit.reward_module import RewardModule, pair_loader
    from clicks2pref.models.reward_heads import HeadConfig, build_reward_model

    torch.manual_seed(args.seed)
    pairs = click_pairs(args)
    model = build_reward_model(kind, ModelConfig(name=args.model, lora=our_lora(args)),
                               HeadConfig(max_length=args.max_length), args.cache, args.seed)
    model.train()
    optim = RewardOptimConfig(groups_per_batch=args.groups_per_batch, lr=args.lr, head_lr=args.head_lr,
                              warmup_ratio=0.0)
    module = RewardModule(model, RewardLossConfig(), optim)
    timer = lightning_timer(size=lambda batch: len(batch["chosen"]))
    steps = args.warmup + args.reps
    trainer = lightning_trainer(steps, [timer], gradient_clip_val=args.max_grad_norm)
    trainer.fit(module, pair_loader(model, pairs, args.groups_per_batch, shuffle=True, seed=args.seed,
                                    shared_prefix=shared_prefix))
    reps, work = timed(timer.seconds, args.warmup), timed(timer.work, args.warmup)
    out = settings(args, pairs)
    out.update(driver="lightning Trainer.fit", kind=kind, shared_prefix=shared_prefix)
    return side_result(f"ours_{kind}" + ("" if shared_prefix else "_full"), reps, work, "pairs/s", out)


def sequence_classifier(args, pad_token_id: int):
    """A one-label `AutoModelForSequenceClassification` on the registry model's weights, loaded once (no
    second copy in memory): from the converted folder, or tiny-llama's random weights with the seed ours use."""
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        if args.model == TINY_LLAMA:
            cfg = ModelConfig(name=TINY_LLAMA)
            causal = tiny_llama(cfg, len(load_tokenizer(cfg, args.cache)), pad_token_id, args.seed)
            causal.config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(causal.config)
            model.model.load_state_dict(causal.model.state_dict())
        else:
            model = AutoModelForSequenceClassification.from_pretrained(resolve(args.model, args.cache), num_labels=1,
                                                                       dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    return model


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer  # loads TRL: the baseline's process only

    torch.manual_seed(args.seed)
    pairs = click_pairs(args)
    tok = load_tokenizer(ModelConfig(name=args.model), args.cache)
    model = sequence_classifier(args, tok.pad_token_id)
    dataset = Dataset.from_list([{"prompt": q["context"], "chosen": [{"role": "assistant", "content": q["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": q["rejected"]}]} for q in pairs])
    batch = pairs_per_batch(args, pairs)
    micro = min(args.trl_micro_batch, batch)
    accumulation = -(-batch // micro)
    batch = micro * accumulation  # pairs per optimiser step: a whole number of micro-batches
    timer = trl_timer()
    with tempfile.TemporaryDirectory() as out_dir:
        config = RewardConfig(
            output_dir=out_dir, report_to="none", use_cpu=True, save_strategy="no", bf16=False, fp16=False,
            gradient_checkpointing=False, optim="adamw_torch", per_device_train_batch_size=micro,
            gradient_accumulation_steps=accumulation, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=args.max_grad_norm, max_length=args.max_length,
            max_steps=args.warmup + args.reps, logging_steps=1, disable_tqdm=True, seed=args.seed,
            dataloader_num_workers=0)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok,
                                callbacks=[timer], peft_config=peft_lora(args, "SEQ_CLS"))
        kept = len(trainer.train_dataset)
        trainer.train()
    reps = timed(timer.seconds, args.warmup)
    out = settings(args, pairs)
    out.update(driver="trl.RewardTrainer.train", pairs_within_max_length=kept, trl_micro_batch=micro,
               trl_accumulation_steps=accumulation, trl_pairs_per_step=batch)
    return side_result("trl", reps, [batch] * len(reps), "pairs/s", out)


SIDES = {"ours_btrm": lambda a: run_ours(a, "btrm"), "trl": run_trl, "ours_garm": lambda a: run_ours(a, "garm"),
         "ours_btrm_full": lambda a: run_ours(a, "btrm", shared_prefix=False)}
RATIOS = {"ours_btrm/trl": ("ours_btrm", "trl"), "ours_garm/ours_btrm": ("ours_garm", "ours_btrm"),
          "ours_btrm/ours_btrm_full": ("ours_btrm", "ours_btrm_full")}


def main() -> None:
    main_or_side(script_path(__file__), parse_args(), SIDES, RATIOS)


if __name__ == "__main__":
    main()
