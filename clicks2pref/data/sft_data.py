"""Single-suggestion SFT data: the suggestions users clicked, grouped by the context they were shown in.

Paper stage 2(a). A click log holds panels; each clicked suggestion is evidence that it suits its
context. Impressions are grouped by context, `(topic, facet)` when the log carries those fields, else
the conversation text itself, so one group collects every clicked suggestion for the same situation
over all the weeks read: these are the candidates that assembly (`clicks2pref.data.assembly`) turns
into three-suggestion targets, and the single-suggestion examples the teacher is trained on.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from clicks2pref.config.sft import SFTDataConfig
from clicks2pref.data.io import load_impressions
from clicks2pref.errors import ClickLogError

_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?.!]+$")


def normalize(text: str) -> str:
    """The dedup key of a suggestion: lower case, single spaces, no trailing ?/./!."""
    return _TRAILING.sub("", _SPACE.sub(" ", text.strip().lower()))


def group_key(record: dict) -> str:
    """`topic/facet` when the log has both, else a hash of the conversation."""
    if record.get("topic") and record.get("facet"):
        return f"{record['topic']}/{record['facet']}"
    blob = json.dumps([[t["role"], t["content"]] for t in record["context"]])
    return "ctx-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


def click_groups(records: list[dict], cfg: SFTDataConfig) -> list[dict]:
    """Context groups with their clicked suggestions, in first-seen order.

    Each group: `group`, `topic`, `facet`, `context` (its most frequent logged conversation),
    `impressions` (count in the week range) and `candidates`: the suggestions clicked at least
    `min_clicks` times, as `{"text", "clicks", "shown", "source": "click"}`, best first (most clicks,
    then highest click rate, then first seen). Groups whose suggestions were never clicked are kept
    with no candidates, so assembly can report them.
    """
    groups: dict[str, dict] = {}
    for rec in records:
        if rec["week"] < cfg.first_week or (cfg.last_week is not None and rec["week"] > cfg.last_week):
            continue
        key = group_key(rec)
        g = groups.setdefault(key, {"group": key, "topic": rec.get("topic"), "facet": rec.get("facet"),
                                    "contexts": Counter(), "first": {}, "impressions": 0, "stats": {}})
        ctx = json.dumps(rec["context"], sort_keys=True)
        g["contexts"][ctx] += 1
        g["first"].setdefault(ctx, len(g["first"]))
        g["impressions"] += 1
        for text, clicked in zip(rec["suggestions"], rec["clicks"]):
            text = _SPACE.sub(" ", text.strip())
            s = g["stats"].setdefault(normalize(text) if cfg.dedup else text,
                                      {"variants": Counter(), "clicks": 0, "shown": 0, "order": len(g["stats"])})
            s["variants"][text] += 1
            s["clicks"] += clicked
            s["shown"] += 1
    out = []
    for g in groups.values():
        context = max(g["contexts"], key=lambda c: (g["contexts"][c], -g["first"][c]))
        cands = [{"text": s["variants"].most_common(1)[0][0], "clicks": s["clicks"], "shown": s["shown"],
                  "source": "click", "_order": s["order"]}
                 for s in g["stats"].values() if s["clicks"] >= max(cfg.min_clicks, 1)]
        cands.sort(key=lambda c: (-c["clicks"], -c["clicks"] / c["shown"], c["_order"]))
        for c in cands:
            del c["_order"]
        out.append({"group": g["group"], "topic": g["topic"], "facet": g["facet"], "context": json.loads(context),
                    "impressions": g["impressions"], "candidates": cands})
    return out


def clicked_groups(cfg, source: str) -> list[dict]:
    """`click_groups` of the logs at `source` under `sft.data`; an error naming the fix when nothing qualifies."""
    groups = click_groups(load_impressions(source, cfg.data.on_invalid), cfg.sft.data)
    if not any(g["candidates"] for g in groups):
        d = cfg.sft.data
        raise ClickLogError(f"no suggestion clicked at least {d.min_clicks} time(s) in weeks "
                            f"{d.first_week}..{d.last_week or 'last'}; widen sft.data", str(source))
    return groups


def split_groups(groups: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, val) by a hash of the group key: stable across runs and independent of group order."""
    def bucket(key: str) -> float:
        return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [g for g in groups if bucket(g["group"]) < val_fraction]
    if val_fraction > 0 and not val and len(groups) > 1:  # tiny logs: still hold one group out
        val = [min(groups, key=lambda g: bucket(g["group"]))]
    keys = {g["group"] for g in val}
    return [g for g in groups if g["group"] not in keys], val


def single_suggestion_examples(groups: list[dict]) -> list[dict]:
    """One example per clicked suggestion: `{"context", "target", "source": "click", "group", "clicks"}`."""
    return [{"context": g["context"], "target": c["text"], "source": "click", "group": g["group"],
             "clicks": c["clicks"]} for g in groups for c in g["candidates"]]


def click_summary(groups: list[dict]) -> dict:
    """Counts for the report: groups, impressions, clicked candidates and groups by candidate count."""
    sizes = Counter(min(len(g["candidates"]), 3) for g in groups)
    return {"groups": len(groups), "impressions": sum(g["impressions"] for g in groups),
            "clicked_suggestions": sum(len(g["candidates"]) for g in groups),
            "groups_by_candidates": {("3+" if k == 3 else str(k)): sizes[k] for k in sorted(sizes)}}
