"""Splits of click logs taken from the logs themselves: which weeks train, which conversations are held out.

A team's logs have whatever weeks they have, so no split names fixed week numbers:

- reward-model weeks (`week_roles`): every week but the last trains, the last is the IID test; a config
  that names weeks (`reward_model.pairs.train_weeks=[1,2]`) must name weeks the logs hold, else one line
  names the weeks present. One week of logs has no later week to test on: its conversations split instead.
- held-out conversations (`split_logs`): with two weeks or more, the conversations first logged in the last
  week (time, as a live test would see them); with one week, or a last week that brings no new conversation,
  a stable hash share of the conversations. Nothing held out is trained on. The held-out conversations
  divide again by hash: `val` (fusion's fit, GRPO's checkpoint selection) and `test` (offline evaluation).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

from clicks2pref.errors import ClickLogError

BY = ("week", "context")


def weeks_present(records: Sequence[dict]) -> list[int]:
    return sorted({r["week"] for r in records})


def check_weeks(asked: Optional[Sequence[int]], records: Sequence[dict], key: str, source=None) -> None:
    """A ClickLogError naming the weeks present when `asked` names a week the logs do not hold."""
    if asked is None:
        return
    present = weeks_present(records)
    missing = sorted(set(asked) - set(present))
    if missing:
        raise ClickLogError(f"asks for week(s) {missing}, which the logs do not hold (weeks present: {present}); "
                            f"set {key} to some of {present}, or to null to split by the logs' own weeks",
                            None if source is None else str(source), field=key)


def week_roles(records: Sequence[dict], train_weeks: Optional[Sequence[int]] = None,
               test_weeks: Optional[Sequence[int]] = None, key: str = "reward_model.pairs") -> tuple[list, list]:
    """(train weeks, test weeks): the configured ones, checked against the logs, or (null) every week but
    the last and the last. One week alone: ([week], []) and the caller splits by conversation."""
    check_weeks(train_weeks, records, f"{key}.train_weeks")
    check_weeks(test_weeks, records, f"{key}.test_weeks")
    present = weeks_present(records)
    if train_weeks is None:
        held = list(test_weeks) if test_weeks is not None else present[-1:] if len(present) > 1 else []
        train_weeks = [w for w in present if w not in held]
    if test_weeks is None:
        test_weeks = [w for w in present if w not in set(train_weeks)][-1:] if len(present) > 1 else []
    return list(train_weeks), list(test_weeks)


def conversation_key(context: list[dict]) -> str:
    """A stable id of a conversation (the same as `clicks2pref.data.pairs.context_key`)."""
    blob = json.dumps([[t["role"], t["content"]] for t in context], ensure_ascii=False)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _bucket(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from a conversation key: stable across runs and record order."""
    return int(hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0x100000000


@dataclass
class LogSplit:
    by: str  # week: the last week's new conversations are held out | context: a hash share of them
    weeks: list[int]  # present in the logs
    train: list[dict] = field(default_factory=list)  # impressions the policy and reward models may train on
    val: list[dict] = field(default_factory=list)  # held out: fusion's fit, GRPO's checkpoint selection
    test: list[dict] = field(default_factory=list)  # held out: offline evaluation
    dropped: int = 0  # last-week impressions of conversations logged earlier (in neither side)

    @property
    def heldout(self) -> list[dict]:
        return self.val + self.test

    def describe(self) -> str:
        n = lambda rs: len({conversation_key(r["context"]) for r in rs})  # noqa: E731
        how = (f"by time: weeks {self.weeks[:-1]} train, the conversations first logged in week {self.weeks[-1]} "
               "are held out" if self.by == "week" else
               f"by conversation (week(s) {self.weeks}): a hash share of the conversations is held out")
        return (f"{how}; train {len(self.train)} impressions ({n(self.train)} conversations), held out: val "
                f"{len(self.val)} ({n(self.val)}), test {len(self.test)} ({n(self.test)})"
                + (f"; {self.dropped} last-week impressions of earlier conversations unused" if self.dropped else ""))


def split_logs(records: Sequence[dict], heldout_fraction: float = 0.25, val_fraction: float = 0.5,
               seed: int = 0) -> LogSplit:
    """Train and held-out impressions of the logs (module docstring). `heldout_fraction`: the share of
    conversations held out when splitting by conversation; `val_fraction`: the share of held-out
    conversations in `val` (at least one each side when there are two or more)."""
    if not records:
        raise ClickLogError("no impressions to split; pass click logs with at least one impression", field="data.logs")
    weeks = weeks_present(records)
    keys = [conversation_key(r["context"]) for r in records]
    held: set[str] = set()
    by, dropped = "context", 0
    if len(weeks) > 1:
        earlier = {k for k, r in zip(keys, records) if r["week"] < weeks[-1]}
        held = {k for k, r in zip(keys, records) if r["week"] == weeks[-1]} - earlier
        by = "week" if held else "context"
    if by == "context":
        distinct = sorted(set(keys))
        held = {k for k in distinct if _bucket(k, seed) < heldout_fraction}
        if not held and len(distinct) > 1:  # tiny logs: still hold one conversation out
            held = {min(distinct, key=lambda k: _bucket(k, seed))}
        if len(held) == len(distinct) and len(distinct) > 1:
            held.discard(max(distinct, key=lambda k: _bucket(k, seed)))
        train = [r for k, r in zip(keys, records) if k not in held]
    else:
        train = [r for r in records if r["week"] < weeks[-1]]
        dropped = sum(r["week"] == weeks[-1] and k not in held for k, r in zip(keys, records))
    ordered = sorted(held, key=lambda k: _bucket(k, seed + 1))
    n_val = round(len(ordered) * val_fraction)
    if len(ordered) > 1:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    val_keys = set(ordered[:n_val])
    return LogSplit(by, weeks, train,
                    [r for k, r in zip(keys, records) if k in held and k in val_keys],
                    [r for k, r in zip(keys, records) if k in held and k not in val_keys], dropped)


def contexts_of(records: Sequence[dict]) -> list[list[dict]]:
    """The distinct conversations of `records`, in first-seen order."""
    seen: dict[str, list[dict]] = {}
    for r in records:
        seen.setdefault(conversation_key(r["context"]), r["context"])
    return list(seen.values())


def position_order(records: list[dict]) -> dict:
    """Whether panel order was randomised: of the (conversation, suggestion) pairs shown in two impressions or
    more, how many were shown at more than one position. Without that, position and content are confounded:
    the examination of each position is not identified and a reward model learns position."""
    positions: dict = defaultdict(set)
    shown: Counter = Counter()
    for r in records:
        key = conversation_key(r["context"])
        for k, s in enumerate(r["suggestions"]):
            positions[(key, s)].add(k)
            shown[(key, s)] += 1
    repeated = [item for item, n in shown.items() if n > 1]
    moved = sum(len(positions[item]) > 1 for item in repeated)
    return {"repeated": len(repeated), "moved": moved, "randomised": bool(moved)}
