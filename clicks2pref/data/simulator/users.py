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

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n users: each one's segment (index into `segments`) and next intent (index into `intents`, −1 for a
        user with none), two uniforms per user by inverse CDF. A segment's row of `intent_p` followed by its
        abandonment sums to 1, so one uniform picks the intent or no intent at all."""
        seg_cdf = np.cumsum(self.segment_p)
        seg = np.minimum(np.searchsorted(seg_cdf, rng.random(n) * seg_cdf[-1], side="right"), len(seg_cdf) - 1)
        cdf = np.cumsum(np.concatenate([self.intent_p, self.abandonment[:, None]], axis=1), axis=1)
        cdf /= cdf[:, -1:]  # exactly 1 at the end: rounding never leaves a user without an outcome
        f = (rng.random(n)[:, None] >= cdf[seg, :-1]).sum(axis=1)
        return seg, np.where(f == len(self.intents), -1, f)


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
