"""Impressions as click-model examples: every logged panel, no-clicks included (`reward_model.objective=click_model`).

Users who saw the same panel in the same order and clicked the same way are one example with a
count, so 24 simulated users of one panel cost a forward pass per distinct suggestion, not 24.
Weeks split them as they split pairs (`clicks2pref.data.pairs`): the train weeks (minus a validation
share of panels), the IID test weeks, and the OOD logs.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Optional

import torch

from clicks2pref.config.pairs import PairConfig
from clicks2pref.data.log_splits import week_roles
from clicks2pref.data.pairs import context_key, panel_key, split_by_group


def impression_examples(records: list[dict]) -> list[dict]:
    """One example per distinct (panel, order, clicks), with `count` users; `group` is the panel."""
    counts: Counter = Counter()
    first: dict = {}
    for rec in records:
        key = (panel_key(rec), json.dumps(rec["suggestions"], ensure_ascii=False), tuple(rec["clicks"]))
        counts[key] += 1
        first.setdefault(key, rec)
    return [{"context": first[key]["context"], "suggestions": list(first[key]["suggestions"]),
             "clicks": list(key[2]), "count": n, "week": first[key]["week"], "group": key[0],
             "topic": first[key].get("topic"), "facet": first[key].get("facet")}
            for key, n in counts.items()]


def impression_splits(records: list[dict], cfg: PairConfig, ood_records: Optional[list[dict]] = None
                      ) -> dict[str, list[dict]]:
    """{"train", "val", "iid"[, "ood"]} examples, by the same weeks and panel split as the pairs."""
    examples = impression_examples(records)
    train_weeks, test_weeks = week_roles(records, cfg.train_weeks, cfg.test_weeks)
    train = [e for e in examples if e["week"] in set(train_weeks)]
    train, val = split_by_group(train, cfg.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "iid": [e for e in examples if e["week"] in set(test_weeks)]}
    if ood_records is not None:
        ood = impression_examples(ood_records)
        splits["ood"] = [e for e in ood if cfg.ood_weeks is None or e["week"] in set(cfg.ood_weeks)]
    return splits


def group_examples(examples: list[dict]) -> list[list[dict]]:
    """Examples grouped by panel (first-seen order): a batch of whole panels scores each text once."""
    groups: dict[str, list[dict]] = {}
    for e in examples:
        groups.setdefault(e["group"], []).append(e)
    return list(groups.values())


def indexed(examples: list[dict], positions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(items [N, K] indexing distinct (context, suggestion), clicks [N, K], lengths [N], counts [N], n_items)."""
    index: dict = {}
    rows = [[index.setdefault((context_key(e["context"]), s), len(index)) for s in e["suggestions"][:positions]]
            for e in examples]
    items = torch.tensor([row + [0] * (positions - len(row)) for row in rows])
    clicks = torch.tensor([(list(e["clicks"][:positions]) + [0] * positions)[:positions] for e in examples])
    lengths = torch.tensor([len(row) for row in rows])
    counts = torch.tensor([float(e["count"]) for e in examples])
    return items, clicks, lengths, counts, len(index)
