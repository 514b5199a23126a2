"""Preference pairs from click logs (SPEC 3 and 5.3): clicked ≻ shown-and-not-clicked.

A click says more about the suggestions the user looked at and passed over than about the ones they
never reached, so which pairs count is a position filter (`reward_model.pairs.position_filter`):

- `skip_above` (default, Joachims' "click > skip above"): the rejected suggestion was shown above
  the clicked one in the same impression, so it was examined and skipped;
- `none`: every clicked ≻ not-clicked pair of the impression, including suggestions below the click
  that a cascade user never examined;
- `same_position`: position-matched pairs across impressions of the same context (one impression
  cannot hold two suggestions at one position): the suggestion clicked at position k ≻ a different
  suggestion shown at position k, not clicked, in another impression with the same context. It
  removes position bias from the comparison at the price of far fewer pairs.

Weeks split the pairs in time: the logs' weeks but the last train (minus a validation share of panels), the
last is the in-distribution test (`clicks2pref.data.log_splits.week_roles`; weeks 1–3 and 4 of collect's
logs); logs of another policy (`data.ood_logs`) give the out-of-distribution test.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from typing import Optional

from clicks2pref.config.pairs import POSITION_FILTERS, PairConfig
from clicks2pref.data.log_splits import week_roles


def context_key(context: list[dict]) -> str:
    """A short stable id of a conversation (pairs and items are grouped and cached by it)."""
    blob = json.dumps([[t["role"], t["content"]] for t in context], ensure_ascii=False)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def panel_key(record: dict) -> str:
    """The panel an impression showed: `panel_id` when logged, else context + suggestions."""
    if record.get("panel_id"):
        return f"{record['policy']}/{record['panel_id']}"
    blob = context_key(record["context"]) + json.dumps(record["suggestions"], ensure_ascii=False)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _pair(record: dict, c: int, r: int, rejected_record: Optional[dict] = None) -> dict:
    other = rejected_record or record
    pair = {"context": record["context"], "chosen": record["suggestions"][c], "rejected": other["suggestions"][r],
            "chosen_pos": c + 1, "rejected_pos": r + 1, "impression_id": record["impression_id"],
            "week": record["week"], "policy": record["policy"], "group": panel_key(record)}
    if rejected_record is not None:
        pair["rejected_impression_id"] = rejected_record["impression_id"]
        pair["group"] = context_key(record["context"])
    return pair


def _within_impression(record: dict, position_filter: str) -> list[dict]:
    clicks = record["clicks"]
    return [_pair(record, c, r) for c, clicked in enumerate(clicks) if clicked
            for r, other in enumerate(clicks) if not other and (position_filter == "none" or r < c)]


def _same_position(records: list[dict]) -> list[dict]:
    by_slot: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for rec in records:
        for k in range(len(rec["suggestions"])):
            by_slot[(context_key(rec["context"]), k)].append(rec)
    pairs = []
    for (_, k), recs in by_slot.items():
        clicked = [r for r in recs if r["clicks"][k]]
        skipped = [r for r in recs if not r["clicks"][k]]
        pairs += [_pair(c, k, k, s) for c in clicked for s in skipped
                  if s["suggestions"][k] != c["suggestions"][k]]
    return pairs


def build_pairs(records: list[dict], position_filter: str = "skip_above") -> list[dict]:
    """Preference pairs (SPEC 3 format plus `week`, `policy` and `group`, the panel or context they
    share) from impressions. Pairs whose two texts are equal carry no preference and are dropped."""
    if position_filter not in POSITION_FILTERS:
        raise ValueError(f"unknown position filter {position_filter!r}; accepted: {', '.join(POSITION_FILTERS)}")
    if position_filter == "same_position":
        pairs = _same_position(records)
    else:
        pairs = [p for rec in records for p in _within_impression(rec, position_filter)]
    return [p for p in pairs if p["chosen"] != p["rejected"]]


def split_by_group(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(rest, held out): a random `fraction` of groups (panels), so no panel is on both sides."""
    groups = sorted({p["group"] for p in pairs})
    n_held = round(len(groups) * fraction) if fraction > 0 else 0
    if fraction > 0 and len(groups) > 1:
        n_held = min(max(n_held, 1), len(groups) - 1)
    held = set(random.Random(seed).sample(groups, n_held))
    return [p for p in pairs if p["group"] not in held], [p for p in pairs if p["group"] in held]


def pair_splits(records: list[dict], cfg: PairConfig, ood_records: Optional[list[dict]] = None
                ) -> dict[str, list[dict]]:
    """{"train", "val", "iid"[, "ood"]} pairs by week (SPEC 5.3); "ood" only when OOD logs are given."""
    pairs = build_pairs(records, cfg.position_filter)
    train_weeks, test_weeks = week_roles(records, cfg.train_weeks, cfg.test_weeks)
    train = [p for p in pairs if p["week"] in set(train_weeks)]
    train, val = split_by_group(train, cfg.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "iid": [p for p in pairs if p["week"] in set(test_weeks)]}
    if ood_records is not None:
        ood = build_pairs(ood_records, cfg.position_filter)
        splits["ood"] = [p for p in ood if cfg.ood_weeks is None or p["week"] in set(cfg.ood_weeks)]
    return splits


def group_pairs(pairs: list[dict]) -> list[list[dict]]:
    """Pairs grouped by `group` (first-seen order): a batch of whole panels scores each text once."""
    groups: dict[str, list[dict]] = {}
    for p in pairs:
        groups.setdefault(p["group"], []).append(p)
    return list(groups.values())
