"""Simulated traffic: contexts sampled for a week, panels shown to simulated users, and the impressions logged.

Shared by the stages that put a policy in front of the simulator (collect's logging weeks, serve's weeks of
the SFT policy, GRPO's RL logs): each panel is shown to several users, each user seeing it in a fresh random
order when positions are shuffled, and every user's sampled clicks are one impression record.
"""
from __future__ import annotations

import random
from pathlib import Path

from clicks2pref.data.io import load_impressions, read_jsonl
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.models.generate import generate


def sample_contexts(pairs: list, n: int, rng: random.Random) -> list:
    """n contexts without replacement while they last, then with."""
    if n <= len(pairs):
        return rng.sample(pairs, n)
    return rng.sample(pairs, len(pairs)) + rng.choices(pairs, k=n - len(pairs))


def shown_order(panel: list[str], shuffle: bool, rng: random.Random) -> list[str]:
    """The order one user sees: a fresh permutation when positions are randomised, else as generated."""
    return rng.sample(panel, len(panel)) if shuffle and len(panel) > 1 else list(panel)


def log_week(model, tok, sim, template, policy: str, week: int, contexts: list, cfg, rng: random.Random,
             ) -> tuple[list[dict], int]:
    """One week of impressions; returns the records and the number of panels with nothing to show."""
    k = len(cfg.simulator.examination)
    conversations = [sim.context(t, f, rng) for t, f in contexts]
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], cfg.policy.generation,
                    seed=cfg.seed * 1000 + week, desc=f"{policy} week {week}")
    panels = [parse_suggestions(o, k).suggestions for o in outs]
    return serve(sim, contexts, conversations, panels, policy, week, cfg.collect.users_per_panel,
                 cfg.collect.shuffle_positions, rng)


def serve(sim, contexts: list, conversations: list, panels: list[list[str]], policy: str, week: int, users: int,
          shuffle: bool, rng: random.Random) -> tuple[list[dict], int]:
    """Each panel shown to `users` simulated users (their sampled clicks) as impression records; returns the
    records and the number of panels with nothing to show."""
    sim.sim.prefetch(s for p in panels for s in p)
    records, empty = [], 0
    for panel_id, ((topic, facet), context, panel) in enumerate(zip(contexts, conversations, panels)):
        if not panel:
            empty += 1
            continue
        for _ in range(users):
            shown = shown_order(panel, shuffle, rng)
            click = sim.sample(topic, facet, shown, rng)
            records.append({"impression_id": f"w{week}-{len(records):06d}", "week": week, "policy": policy,
                            "context": context, "suggestions": shown, "clicks": click.clicks, "topic": topic,
                            "facet": facet, "segment": click.segment, "panel_id": f"w{week}-p{panel_id:05d}"})
    return records, empty


def served(folder: Path, week: int, fmt: str, on_invalid: str) -> tuple[list[dict], list[list[dict]], list[str]]:
    """A served week in `folder` (a serve artifact): its impressions (none when every panel was empty) and its
    sampled (context, text)s, empty panels included."""
    path = Path(folder) / f"week{week}.{fmt}"
    records = load_impressions(str(path), on_invalid) if path.exists() else []
    panels = read_jsonl(Path(folder) / f"panels{week}.jsonl")
    return records, [p["context"] for p in panels], [p["text"] for p in panels]
