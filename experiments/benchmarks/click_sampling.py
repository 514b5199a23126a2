"""Benchmark: milliseconds per impression of collect's click sampling, `ClickSimulator.sample_users` (a panel's
logits computed once, its users' draws as numpy arrays) against the baseline of the per-user path at e7476db
(a fresh order and `ClickSimulator.sample` per user, the panel's logits recomputed for every user), on the same
panels, the default simulator (the contextual user model, MiniLM similarity) and collect's settings
(`collect.users_per_panel` users per panel, positions shuffled per user).

    python experiments/benchmarks/click_sampling.py [--panels 40] [--users 192] [--simulator contextual]
        [--warmup 1] [--reps 5] [--record RUN]

The baseline is e7476db's `clicks2pref/data/simulator/click_model.py` itself, read with `git show` into a
module of its own (its imports resolve against today's package: the world, the similarity and the users'
intent distribution are shared). Each side runs in its own process (`_common.py`) and builds its simulator
there; the panels' embeddings are computed in the untimed warm-up, as collect's `serve` prefetches them, so
the clock sees sampling only. A panel is three suggestions drawn from its topic's other facets' questions and
paraphrases. `--record RUN` writes the run (date, commit, machine, command), the table `click_sampling` and the
value `click_sampling_speedup` into this folder's results.json (a rerun replaces them); `python
experiments/tables.py` renders them into the README.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
import types
from datetime import date
from pathlib import Path

import numpy as np

from _common import main_or_side, script_path, side_result, timed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASELINE = "e7476db"
BASELINE_FILE = "clicks2pref/data/simulator/click_model.py"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", default=None, help="run one side in this process (the parent launches each side)")
    ap.add_argument("--json", action="store_true", help="JSON lines only (no summary on stderr)")
    ap.add_argument("--panels", type=int, default=40, help="panels per repetition (collect: 40 per template)")
    ap.add_argument("--users", type=int, default=None, help="users per panel (default: collect.users_per_panel)")
    ap.add_argument("--simulator", default="contextual", help="conf/simulator choice: contextual | v1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes over the panels first")
    ap.add_argument("--reps", type=int, default=5, help="timed passes; the median is reported")
    ap.add_argument("--record", default=None, metavar="RUN", help="write this run into results.json")
    ap.add_argument("--machine", default=f"{os.cpu_count()}-core CPU", help="the machine, as results.json names it")
    ap.add_argument("--note", default=None, help="a note on the run for results.json (a busy machine, ...)")
    return ap.parse_args(argv)


def collect_config(args):
    """The simulator config and collect's users per panel and shuffling, composed from conf/."""
    from omegaconf import OmegaConf

    from clicks2pref.config import compose_job

    cfg = compose_job(str(ROOT / "conf"), [f"simulator={args.simulator}"])
    users = args.users or int(cfg.collect.users_per_panel)
    return OmegaConf.to_object(cfg.simulator), users, bool(cfg.collect.shuffle_positions)


def panels(world: dict, n: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """n (topic, current facet, three suggestions from the topic's other facets), the same on both sides."""
    rng = random.Random(seed)
    topics = sorted(world)
    out = []
    for _ in range(n):
        topic = world[rng.choice(topics)]
        current = rng.choice(topic.facets)
        pool = [q for f in topic.facets if f.id != current.id for q in f.questions]
        out.append((topic.id, current.id, rng.sample(pool, 3)))
    return out


def baseline_module():
    """e7476db's click_model.py as a module of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:{BASELINE_FILE}"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"click_model_{BASELINE}")
    module.__file__ = f"{BASELINE}:{BASELINE_FILE}"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def passes(args, one_pass) -> tuple[list[float], int]:
    """The timed passes' seconds (after the warm-up) and the impressions in each."""
    seconds, impressions = [], 0
    for _ in range(args.warmup + args.reps):
        start = time.perf_counter()
        impressions = one_pass()
        seconds.append(time.perf_counter() - start)
    return timed(seconds, args.warmup), impressions


def settings(args, users: int, shuffle: bool) -> dict:
    return {"simulator": args.simulator, "panels": args.panels, "users_per_panel": users, "shuffle": shuffle,
            "warmup": args.warmup, "seed": args.seed}


def run_sample_users(args) -> dict:
    """Today's path: one `sample_users` call per panel, as collect's `serve` and A/B make it."""
    from clicks2pref.data.simulator import build_simulator

    sim_cfg, users, shuffle = collect_config(args)
    sim = build_simulator(sim_cfg)
    items = panels(sim.world, args.panels, args.seed)
    rng = np.random.default_rng(args.seed)

    def one_pass() -> int:
        n = 0
        for topic, facet, panel in items:
            n += len(sim.sample_users(topic, facet, panel, users, rng, shuffle).clicks)
        return n

    seconds, n = passes(args, one_pass)
    return side_result("sample_users", seconds, [n] * len(seconds), "impressions/s", settings(args, users, shuffle))


def run_baseline(args) -> dict:
    """e7476db's path: per user, a fresh order (`traffic.shown_order`) and `ClickSimulator.sample`."""
    old = baseline_module()
    sim_cfg, users, shuffle = collect_config(args)
    sim = old.build_simulator(sim_cfg)
    items = panels(sim.world, args.panels, args.seed)
    rng = random.Random(args.seed)

    def one_pass() -> int:
        n = 0
        for topic, facet, panel in items:
            for _ in range(users):
                shown = rng.sample(panel, len(panel)) if shuffle and len(panel) > 1 else list(panel)
                old.ClickSimulator.sample(sim, topic, facet, shown, rng)
                n += 1
        return n

    seconds, n = passes(args, one_pass)
    return side_result(BASELINE, seconds, [n] * len(seconds), "impressions/s", settings(args, users, shuffle))


def ms_per_impression(results: dict) -> dict:
    return {"ms_per_impression": {side: 1000.0 / r["rate"] for side, r in results.items()}}


def command_line(argv: list[str]) -> str:
    """This run's command, less --record, --machine and --note (they name the record, not the run)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--record", "--machine", "--note"):
            skip = True
        elif not a.startswith(("--record=", "--machine=", "--note=")):
            out.append(a)
    return " ".join(["python experiments/benchmarks/click_sampling.py", *map(shlex.quote, out)])


def record_run(args, results: dict, line: dict) -> None:
    """The run, its table and its speed-up into results.json (`experiments/record.py`)."""
    sys.path.insert(0, str(HERE.parent))
    import record

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "clicks2pref/data/simulator"],
                           capture_output=True, text=True).stdout.strip()
    info = {"date": date.today().isoformat(), "commit": commit + (" with uncommitted changes" if dirty else ""),
            "machine": args.machine, "command": command_line(sys.argv[1:])}
    if args.note:
        info["note"] = args.note
    new, old = results["sample_users"], results[BASELINE]
    s = new["settings"]
    work = f"{s['panels']} panels × {s['users_per_panel']} users, {args.simulator}"
    ratio = line["ratio"][f"sample_users/{BASELINE}"]
    values = {"click_sampling_speedup": record.value(
        ratio, f"collect's click sampling per impression, `sample_users` over the per-user path at {BASELINE} "
        f"({work})", args.record, "{:.0f}×")}
    ms = line["ms_per_impression"]
    rows = [[f"per user, the panel's logits each time ({BASELINE})", work, ms[BASELINE], old["rate"], None],
            ["`sample_users`: logits once per panel, users as arrays", work, ms["sample_users"], new["rate"],
             {"ref": "click_sampling_speedup", "bold": True}]]
    table = record.table(["path", "work per repetition", "ms per impression", "impressions/s", "speed-up"], rows,
                         args.record, {"ms per impression": "{:.4f}", "impressions/s": "{:,.0f}"})
    results = record.load_results(HERE)
    results["runs"][args.record] = info
    results["values"].update(values)
    results["tables"]["click_sampling"] = table
    (HERE / "results.json").write_text(dumps(results))
    print(f"recorded {args.record} into {HERE / 'results.json'}; render with python experiments/tables.py",
          file=sys.stderr)


def dumps(results: dict) -> str:
    """results.json in this folder's hand layout (as experiments/table4 writes its own): a run or a value per
    line, a table's rows one per line, so that recording a run changes only its lines."""
    line = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731

    def table(t: dict) -> str:
        keys = [f'      "{k}": ' + ("[\n" + ",\n".join("        " + line(r) for r in v) + "\n      ]" if k == "rows"
                                    else line(v)) for k, v in t.items()]
        return "{\n" + ",\n".join(keys) + "\n    }"

    parts = []
    for section, entries in results.items():
        body = [f'    "{k}": ' + (table(v) if section == "tables" else line(v)) for k, v in entries.items()]
        parts.append(f'  "{section}": ' + ("{\n" + ",\n".join(body) + "\n  }" if body else "{}"))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    args = parse_args()
    done = main_or_side(script_path(__file__), args, {"sample_users": run_sample_users, BASELINE: run_baseline},
                        {f"sample_users/{BASELINE}": ("sample_users", BASELINE)}, ms_per_impression)
    if done is not None and args.record:
        record_run(args, *done)


if __name__ == "__main__":
    main()
