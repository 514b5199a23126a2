"""What the benchmark scripts that time each side in its own process share.

Each side runs in its own process (`script.py --side NAME --json`, launched by the same script without
`--side`), so the peak resident memory it reports is its own and one side's warm caches never help the
other. A side prints one JSON line: side, rate, unit, the median over the timed repetitions after the
warm-up, every repetition's seconds, peak RSS and the settings it ran with. The parent prints those
lines, then one line with the ratios. Lightning and TRL are imported inside the side that uses them, so
neither process carries the other's libraries.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.data.simulator import load_world
from clicks2pref.data.simulator.world import context_messages
from clicks2pref.models.registry import LoraConfig

# every linear layer of a Llama block: what "LoRA on all linear layers" means for SmolLM2 and tiny-llama
LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags every script takes: which side, the model, LoRA, seed and how many steps are timed."""
    ap.add_argument("--side", default=None, help="run one side in this process (the parent launches each side)")
    ap.add_argument("--json", action="store_true", help="JSON lines only (no summary on stderr)")
    ap.add_argument("--model", default="smollm2-135m-instruct",
                    help="registry name: smollm2-135m-instruct | tiny-llama")
    ap.add_argument("--cache", default="~/.cache/clicks2pref")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--reps", type=int, default=3, help="timed steps; the median is reported")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.0)


def our_lora(args) -> LoraConfig:
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(LINEAR_LAYERS))


def peft_lora(args, task_type: str):
    """The same adapters as `our_lora`, as the `peft.LoraConfig` TRL's trainers take."""
    from peft import LoraConfig as PeftLoraConfig  # as the registry does: importing peft loads bitsandbytes

    return PeftLoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=list(LINEAR_LAYERS), bias="none", task_type=task_type)


# --- processes and JSON lines ---------------------------------------------------------------------------------

# the models are local (registry names); nothing may reach for the hub
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def side_result(side: str, seconds: Sequence[float], work: Sequence[float], unit: str, settings: dict) -> dict:
    """One side's line: the median of per-repetition rates (work / seconds), and the raw timings."""
    rates = [w / s for w, s in zip(work, seconds)]
    return {"side": side, "rate": statistics.median(rates), "unit": unit, "median_seconds": statistics.median(seconds),
            "seconds": [round(s, 6) for s in seconds], "work": list(work), "reps": len(seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), "settings": settings}


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


@contextlib.contextmanager
def stdout_to_stderr():
    """Libraries that print (Trainer logs, warnings) go to stderr, so stdout carries only the JSON lines."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def run_sides(script: str, sides: Sequence[str], argv: Sequence[str]) -> dict[str, dict]:
    """Each side in a fresh interpreter (`--side NAME --json` plus the parent's own flags); its JSON line."""
    results = {}
    env = {**os.environ, **OFFLINE}
    for side in sides:
        cmd = [sys.executable, script, *argv, "--side", side, "--json"]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"side {side!r} failed (exit {done.returncode}): {' '.join(cmd)}")
        results[side] = lines[-1]
        emit(results[side])
    return results


def parent_argv(argv: Sequence[str]) -> list[str]:
    """The parent's flags minus --side / --json, which the parent sets per child."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--side":
            skip = True
        elif not (a.startswith("--side=") or a == "--json"):
            out.append(a)
    return out


def finish(results: dict[str, dict], ratios: dict[str, tuple[str, str]], quiet: bool,
           extra: Callable[[dict], dict] | None = None) -> dict:
    """The last JSON line: each named ratio of two sides' rates (plus `extra(results)`, if given); a readable
    summary on stderr unless `quiet`."""
    line = {"ratio": {name: results[a]["rate"] / results[b]["rate"] for name, (a, b) in ratios.items()}}
    more = extra(results) if extra is not None else {}
    line.update(more)
    emit(line)
    if not quiet:
        for r in results.values():
            print(f"{r['side']:>12}: {r['rate']:10.2f} {r['unit']}  (median of {r['reps']}, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB)", file=sys.stderr)
        for name, value in line["ratio"].items():
            print(f"{name}: {value:.2f}x", file=sys.stderr)
        for name, value in more.items():
            print(f"{name}: {json.dumps(value)}", file=sys.stderr)
    return line


def main_or_side(script: str, args, sides: dict[str, Callable], ratios: dict[str, tuple[str, str]],
                 extra: Callable[[dict], dict] | None = None) -> tuple[dict, dict] | None:
    """With --side: run that side here and print its line. Without: run every side in its own process and
    return their lines and the last one (for a script that records its run)."""
    if args.side is not None:
        if args.side not in sides:
            raise SystemExit(f"--side {args.side!r}: one of {', '.join(sides)}")
        with stdout_to_stderr():
            line = sides[args.side](args)
        emit(line)
        return None
    results = run_sides(script, list(sides), parent_argv(sys.argv[1:]))
    return results, finish(results, ratios, args.json, extra)


# --- inputs both sides share ----------------------------------------------------------------------------------


def chat_prompts(n: int, seed: int) -> list[dict]:
    """n GRPO prompts ({"messages", "context"}) from the packaged world, as the GRPO stage builds them."""
    rng = random.Random(seed)
    world = list(load_world().values())
    template = PromptTemplate()
    out = []
    for _ in range(n):
        topic = rng.choice(world)
        context = context_messages(topic, rng.choice(topic.facets), rng)
        out.append({"messages": build_messages(template, context), "context": context})
    return out


LENGTH_BONUS = 0.01  # question_reward per character: small beside one question mark, enough to break ties


def question_reward(text: str) -> float:
    """A reward both sides compute identically from the completion text: question marks plus a small length
    bonus. Cheap on purpose: these benchmarks time the GRPO machinery, not a reward model."""
    text = text.strip()
    return text.count("?") + LENGTH_BONUS * len(text)


# --- timers ---------------------------------------------------------------------------------------------------


def lightning_timer(size: Callable = lambda batch: 1):
    """A Lightning callback recording each training batch's wall seconds and `size(batch)` (its work)."""
    import pytorch_lightning as pl  # here: only our side's process loads Lightning

    class StepTimer(pl.Callback):
        def __init__(self):
            self.seconds, self.work, self._start = [], [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self._start)
            self.work.append(size(batch))

    return StepTimer()


def trl_timer():
    """A transformers `TrainerCallback` recording each optimiser step's wall seconds (setup excluded)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def lightning_trainer(steps: int, callbacks: Sequence, gradient_clip_val=None):
    """A CPU fp32 Trainer as conf/trainer/cpu.yaml builds it, without logger, checkpoints or progress bar.
    The GRPO module clips its own gradients (manual optimisation), so only the reward module passes a clip."""
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps, max_epochs=-1,
                      gradient_clip_val=gradient_clip_val, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, log_every_n_steps=1, callbacks=list(callbacks))


def timed(seconds: Sequence[float], warmup: int) -> list[float]:
    """The repetitions after the warm-up."""
    if len(seconds) <= warmup:
        raise SystemExit(f"only {len(seconds)} steps ran; need more than --warmup {warmup}")
    return list(seconds[warmup:])


def script_path(file: str) -> str:
    return str(Path(file).resolve())
