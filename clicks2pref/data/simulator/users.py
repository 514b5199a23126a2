"""User segments and the hidden next intent f*: what a user who just read this answer wants to ask next.

v1 (the first user model): f* is one of the topic's other facets, with probability ∝ popularity × the
segment's taste for the facet's kind, whatever the conversation was. The contextual model (each part a
switch in `IntentConfig`) lets the conversation decide, as session-based user models do (Balog & Zhai,
*User Simulation for Evaluating Information Access Systems*): facets the current one leads to weigh
`related_boost` more, facets its answer already covers weigh `covered_weight`, a share
`follow_up_share` of the mass goes to follow-ups only this conversation leads to, and a share
`abandonment` of users has no next question at all (real follow-up panels are mostly ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from clicks2pref.config.simulator import IntentConfig, SegmentConfig
from clicks2pref.data.simulator.world import Facet, FollowUp, Topic

Intent = Union[Facet, FollowUp]


@dataclass(frozen=True)
class Intents:
    """P(segment), the candidate intents and P(f* | segment) (rows sum to 1 − abandonment)."""
    segments: list[str]
    segment_p: np.ndarray
    intents: list
    intent_p: np.ndarray
    abandonment: np.ndarray


def intent_id(current: Facet, intent: Intent) -> str:
    """A follow-up's id is scoped by the facet whose conversation it belongs to."""
    return intent.id if isinstance(intent, Facet) else f"{current.id}.{intent.id}"


def intent_distribution(topic: Topic, current: str, segments: dict[str, SegmentConfig],
                        cfg: IntentConfig, related: Optional[tuple[str, ...]] = None) -> Intents:
    """The intents a user of each segment may have after the conversation about facet `current`.

    `related` overrides the facet's own list (the simulator passes derived neighbours for a world that
    has none).
    """
    segments = segments or {"everyone": SegmentConfig()}
    names = list(segments)
    seg_p = np.array([segments[n].weight for n in names], dtype=float)
    seg_p /= seg_p.sum()
    facet = topic.facet(current)
    related = facet.related if related is None else related
    others = [f for f in topic.facets if f.id != current]
    follow = list(facet.follow_ups) if cfg.follow_up_share > 0 else []
    context_w = np.array([(cfg.related_boost if f.id in related else 1.0) *
                          (cfg.covered_weight if f.id in facet.covers else 1.0) for f in others])
    taste = lambda n, items: np.array([i.popularity * segments[n].kind_weights.get(i.kind, 1.0)  # noqa: E731
                                       for i in items])
    rows = []
    for n in names:
        w = taste(n, others) * context_w
        w = w / w.sum()
        if follow:
            u = taste(n, follow)
            w = np.concatenate([(1 - cfg.follow_up_share) * w, cfg.follow_up_share * u / u.sum()])
        rows.append(w)
    abandon = np.array([cfg.abandonment if segments[n].abandonment is None else segments[n].abandonment
                        for n in names], dtype=float)
    return Intents(names, seg_p, others + follow, np.stack(rows) * (1 - abandon)[:, None], abandon)
