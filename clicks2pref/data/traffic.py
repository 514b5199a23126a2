"""Simulated traffic: contexts sampled for a week, panels shown to simulated users, and the impressions logged.

Shared by the stages that put a policy in front of the simulator (collect's logging weeks, serve's weeks of
the SFT policy, GRPO's RL logs): each panel is shown to several users, each user seeing it in a fresh random
order when positions are shuffled, and every user's sampled clicks are one impression record. A panel's users
are drawn together (`ClickSimulator.sample_users`), from a numpy Generator seeded by the caller's `rng`.
"""
from __future__ import annotations

import random
from pathlib import Path

from clicks2pref.data.io import load_impressions, read_jsonl
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.simulator.click_model import generator_from
from clicks2pref.models.generate import generate


def sample_contexts(pairs: list, n: int, rng: random.Random) -> list:
    """n contexts without replacement while they last, then with."""
    if n <= len(pairs):
        return rng.sample(pairs, n)
    return rng.sample(pairs, len(pairs)) + rng.choices(pairs, k=n - len(pairs))


def clicked_share(sim, contexts: list, panels: list[list[str]], users: int, shuffle: bool,
                  rng: random.Random) -> list[float]:
    """Per context, the share of `users` simulated users who clicked its panel (an empty panel: 0)."""
    draws = generator_from(rng)
    return [float(sim.sample_users(t, f, p, users, draws, shuffle).clicks.any(axis=1).mean()) if p else 0.0
            for (t, f), p in zip(contexts, panels)]


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
    draws = generator_from(rng)
    records, empty = [], 0
    for panel_id, ((topic, facet), context, panel) in enumerate(zip(contexts, conversations, panels)):
        if not panel:
            empty += 1
            continue
        seen = sim.sample_users(topic, facet, panel, users, draws, shuffle)
        segments = sim.intents(topic, facet).segments
        for order, clicks, segment in zip(seen.order.tolist(), seen.clicks.tolist(), seen.segment.tolist()):
            records.append({"impression_id": f"w{week}-{len(records):06d}", "week": week, "policy": policy,
                            "context": context, "suggestions": [panel[i] for i in order], "clicks": clicks,
                            "topic": topic, "facet": facet, "segment": segments[segment],
                            "panel_id": f"w{week}-p{panel_id:05d}"})
    return records, empty


def served(folder: Path, week: int, fmt: str, on_invalid: str) -> tuple[list[dict], list[list[dict]], list[str]]:
    """A served week in `folder` (a serve artifact): its impressions (none when every panel was empty) and its
    sampled (context, text)s, empty panels included."""
    path = Path(folder) / f"week{week}.{fmt}"
    records = load_impressions(str(path), on_invalid) if path.exists() else []
    panels = read_jsonl(Path(folder) / f"panels{week}.jsonl")
    return records, [p["context"] for p in panels], [p["text"] for p in panels]
