"""A reward model against the truth, not only against its own pairs: rank agreement with the oracle.

Pairwise accuracy on logged pairs can look fine while the reward orders suggestions the wrong way
(a model that learned position scores the lower item higher, and in logged pairs the clicked item
is nearly always the lower one). Here every distinct logged suggestion is scored by the reward model
and by the simulator's oracle: its click probability shown alone at the top of a panel, marginalised
over users and intents. Evaluation only: nothing trains or selects on these numbers.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.stats import spearmanr

from clicks2pref.data.pairs import context_key
from clicks2pref.models.shared_prefix import rm_outputs


def suggestion_items(impressions: Sequence[dict]) -> dict:
    """Distinct (context, suggestion) -> (topic, facet, context, suggestion, panel ids) of logged impressions."""
    items: dict = {}
    for rec in impressions:
        if rec.get("topic") is None or rec.get("facet") is None:
            continue
        for s in rec["suggestions"]:
            key = (context_key(rec["context"]), s)
            entry = items.setdefault(key, (rec["topic"], rec["facet"], rec["context"], s, set()))
            entry[4].add(rec["group"] if "group" in rec else rec.get("panel_id"))
    return items


def oracle_agreement(scores: np.ndarray, oracle: np.ndarray, panels: Sequence[Sequence[int]]) -> dict:
    """Spearman ρ of reward scores vs oracle values over all items, and the share of within-panel item pairs
    (oracle values differing) that the reward orders like the oracle."""
    rho = float(spearmanr(scores, oracle).statistic) if len(scores) > 2 else float("nan")
    agree = total = 0
    for panel in panels:
        for i, j in itertools.combinations(panel, 2):
            if oracle[i] == oracle[j]:
                continue
            total += 1
            agree += (scores[i] - scores[j]) * (oracle[i] - oracle[j]) > 0
    return {"oracle_spearman": rho, "oracle_within_panel": agree / total if total else float("nan"),
            "oracle_items": int(len(scores)), "oracle_panel_pairs": total}


def reward_oracle_agreement(model, impressions: Sequence[dict], sim, batch_size: int = 32,
                            score: Optional[Callable] = None) -> dict:
    """`oracle_agreement` of a reward model (GaRM μ, or BTRM r) on the suggestions of logged impressions;
    `score` (contexts, suggestions) -> head outputs replaces the model's own scoring (e.g. `cached_outputs`)."""
    items = suggestion_items(impressions)
    if len(items) < 3:
        return {}
    keys = list(items)
    score = score or partial(rm_outputs, model, batch_size=batch_size)
    out = score([items[k][2] for k in keys], [items[k][3] for k in keys])
    scores = (out["mu"] if "mu" in out else out["reward"]).numpy()
    oracle = sim.oracle_ctr_many([(items[k][0], items[k][1], [items[k][3]]) for k in keys])
    by_panel = defaultdict(list)
    for i, k in enumerate(keys):
        for panel in items[k][4]:
            by_panel[panel].append(i)
    return oracle_agreement(scores, oracle, list(by_panel.values()))
