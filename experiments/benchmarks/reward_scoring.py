"""Benchmark: suggestions per second of `rewards.shared_prefix.rm_rewards` (one forward pass over each
conversation, its KV cache shared by that conversation's suggestions) against the baseline of
`RewardModel.rewards` (every (conversation, suggestion) pair encoded and run in full), on the same
SmolLM2 GaRM with LoRA and the same inputs: the GRPO case, many suggestions per conversation.

    python experiments/benchmarks/reward_scoring.py [--contexts 8] [--per-context 48] [--batch-size 32]

Prints both rates, the ratio and the largest difference between the two paths' rewards. Run it on
an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import random
import time

from clicks2pref.data.simulator import load_world
from clicks2pref.data.simulator.world import context_messages
from clicks2pref.models.registry import LoraConfig, ModelConfig
from clicks2pref.models.reward_heads import HeadConfig, build_reward_model
from clicks2pref.models.shared_prefix import rm_rewards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--per-context", type=int, default=48, help="suggestions per conversation (GRPO: G × 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--kappa", type=float, default=1.0)
    ap.add_argument("--cache", default="~/.cache/clicks2pref")
    args = ap.parse_args()

    model = build_reward_model("garm", ModelConfig(lora=LoraConfig()), HeadConfig(), args.cache).eval()
    rng = random.Random(0)
    world = list(load_world().values())
    questions = [q for t in world for f in t.facets for q in f.questions]
    contexts, suggestions = [], []
    for _ in range(args.contexts):
        topic = rng.choice(world)
        context = context_messages(topic, rng.choice(topic.facets), rng)
        for _ in range(args.per_context):
            contexts.append(context)
            suggestions.append(rng.choice(questions))
    n = len(suggestions)
    rm_rewards(model, contexts[:4], suggestions[:4], args.kappa, args.batch_size)  # warm-up

    start = time.perf_counter()
    shared = rm_rewards(model, contexts, suggestions, args.kappa, args.batch_size)
    fast = n / (time.perf_counter() - start)

    start = time.perf_counter()
    full = model.rewards(contexts, suggestions, kappa=args.kappa, batch_size=args.batch_size)
    baseline = n / (time.perf_counter() - start)

    print(f"{n} suggestions over {args.contexts} conversations")
    print(f"baseline (RewardModel.rewards, each pair in full): {baseline:.1f} suggestions/s")
    print(f"rm_rewards (shared conversation prefix):           {fast:.1f} suggestions/s")
    print(f"ratio: {fast / baseline:.2f}x; largest reward difference {float((shared - full).abs().max()):.2e}")


if __name__ == "__main__":
    main()
