"""Preference pairs of whole logged panels for DPO on clicks (`optimizer=dpo_clicks`), with no reward model.

Two panels logged for the same context: the one whose impressions drew more clicks per expected examination
is preferred. A panel's score is Σ clicks / Σ_impressions Σ_k e_k over the positions it filled (clicks over
expected clicks, "COEC"), so a panel is not credited for being shown high: with randomised logging every
panel fills the same positions and e_k only matters for short panels; with unrandomised logs it is what
keeps position from passing for content. e_k are fitted on the logs themselves
(`objectives.click_model.fit_item_examination`), as the reward model's click objective does.

Each pair's panels are written in the policy's output format, suggestions ordered by their own clicks per
expected examination, so the chosen text puts the most clicked suggestion first.
"""
from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Optional, Sequence

from clicks2pref.data.impressions import impression_examples, indexed
from clicks2pref.data.pairs import context_key
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.errors import ConfigError
from clicks2pref.objectives.click_model import fit_item_examination


def learned_examination(records: list[dict], positions: int, steps: int, anchor: float = 1.0,
                        model: str = "cascade") -> list[float]:
    """e_k from the logs, one free attraction per logged suggestion (positions must vary across impressions)."""
    examples = impression_examples(records)
    items, clicks, lengths, counts, n_items = indexed(examples, positions)
    exam, _ = fit_item_examination(items, clicks, lengths, counts, n_items, anchor=anchor, model=model, steps=steps)
    return exam


def group_key(record: dict, group_by: str) -> str:
    """Which context a panel answers: the logged (topic, facet), or the exact conversation."""
    if group_by == "facet" and record.get("topic") is not None and record.get("facet") is not None:
        return f"{record['topic']}/{record['facet']}"
    return context_key(record["context"])


def panel_id(record: dict) -> str:
    """One panel whatever order it was shown in: its logged `panel_id`, else its conversation and suggestion set."""
    if record.get("panel_id"):
        return f"{record['policy']}/{record['week']}/{record['panel_id']}"
    return context_key(record["context"]) + json.dumps(sorted(record["suggestions"]), ensure_ascii=False)


def panel_scores(records: list[dict], examination: Sequence[float], group_by: str = "facet") -> dict:
    """group -> panel -> {"context", "score", "impressions", "suggestions" (most clicked first)}."""
    stats: dict = defaultdict(dict)
    for r in records:
        p = stats[group_key(r, group_by)].setdefault(panel_id(r), {
            "context": r["context"], "clicks": 0.0, "expected": 0.0, "impressions": 0,
            "items": defaultdict(lambda: [0.0, 0.0])})
        p["impressions"] += 1
        for k, (s, c) in enumerate(zip(r["suggestions"], r["clicks"])):
            e = examination[k] if k < len(examination) else examination[-1]
            p["clicks"] += c
            p["expected"] += e
            p["items"][s][0] += c
            p["items"][s][1] += e
    out: dict = {}
    for g, panels in stats.items():
        out[g] = {}
        for key, p in panels.items():
            order = sorted(p["items"], key=lambda s: -p["items"][s][0] / max(p["items"][s][1], 1e-9))
            out[g][key] = {"context": p["context"], "score": p["clicks"] / max(p["expected"], 1e-9),
                           "impressions": p["impressions"], "suggestions": order}
    return out


def panel_pairs(records: list[dict], examination: Sequence[float], group_by: str = "facet", min_impressions: int = 1,
                min_margin: float = 0.0, weeks: Optional[Sequence[int]] = None) -> list[dict]:
    """Every pair of logged panels of one context whose scores differ by more than `min_margin`.

    {"context", "chosen", "rejected" (texts in the output format), "chosen_score", "rejected_score", "group"};
    the prompt is the chosen panel's conversation (under `facet` the two may phrase the question differently).
    """
    if weeks is not None:
        records = [r for r in records if r["week"] in set(weeks)]
    pairs = []
    for g, panels in panel_scores(records, examination, group_by).items():
        kept = sorted((p for p in panels.values() if p["impressions"] >= min_impressions), key=lambda p: -p["score"])
        for a, b in itertools.combinations(kept, 2):
            if a["score"] - b["score"] > min_margin:
                pairs.append({"context": a["context"], "chosen": format_suggestions(a["suggestions"]),
                              "rejected": format_suggestions(b["suggestions"]), "chosen_score": a["score"],
                              "rejected_score": b["score"], "group": g})
    return pairs


def pair_items(records: list[dict], template, opt, positions: int) -> list[dict]:
    """`optimizer=dpo_clicks`'s training items: {"messages", "context", "chosen", "rejected"} per logged pair.

    `opt` is the typed `optimizer` config (weeks, group_by, min_impressions, min_margin, examination)."""
    train = [r for r in records if opt.weeks is None or r["week"] in set(opt.weeks)]
    exam = learned_examination(train, positions, opt.examination_steps) if opt.examination == "item_fit" \
        else [1.0] * positions
    pairs = panel_pairs(train, exam, opt.group_by, opt.min_impressions, opt.min_margin)
    if not pairs:
        raise ConfigError(f"no two logged panels of one {opt.group_by} in weeks {opt.weeks} differ in clicks by more "
                          f"than {opt.min_margin}: log more sessions per context, or use optimizer.group_by=facet, "
                          "optimizer.weeks=null or optimizer.min_margin=0", "optimizer.group_by")
    return [{"messages": build_messages(template, p["context"]), "context": p["context"], "chosen": p["chosen"],
             "rejected": p["rejected"]} for p in pairs]
