"""User segments and the hidden next intent f*."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

from clicks2pref.data.simulator.world import Facet, Topic


@dataclass
class SegmentConfig:
    weight: float = 1.0
    kind_weights: Dict[str, float] = field(default_factory=dict)  # missing kinds weigh 1


def intent_distribution(topic: Topic, current: str, segments: dict[str, SegmentConfig]
                        ) -> tuple[list[str], np.ndarray, list[Facet], np.ndarray]:
    """Segment names, P(segment), candidate intents, and P(f* | segment) over the topic's other facets.

    P(f* | segment) is proportional to popularity x the segment's taste for the facet's kind.
    """
    segments = segments or {"everyone": SegmentConfig()}
    names = list(segments)
    seg_p = np.array([segments[n].weight for n in names], dtype=float)
    seg_p /= seg_p.sum()
    intents = [f for f in topic.facets if f.id != current]
    w = np.array([[f.popularity * segments[n].kind_weights.get(f.kind, 1.0) for f in intents] for n in names])
    return names, seg_p, intents, w / w.sum(axis=1, keepdims=True)
