"""`simulator`: the click simulator's settings (`conf/simulator/`), read by `clicks2pref.data.simulator`.

The defaults are the contextual user model's (`conf/simulator/contextual.yaml`); `conf/simulator/v1.yaml` turns
each of its switches off. What each part does: `QualityConfig` in `data.simulator.quality` (what real users skip),
`SegmentConfig` and `IntentConfig` in `data.simulator.users` (who the users are and what they want to ask next).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class QualityConfig:
    min_words: int = 3
    max_words: int = 15
    not_question_penalty: float = -2.0
    bad_length_penalty: float = -2.0
    copy_threshold: float = 0.9
    copy_penalty: float = -4.0
    duplicate_threshold: float = 0.9
    duplicate_penalty: float = -4.0
    min_letter_ratio: float = 0.6
    garbage_penalty: float = -6.0


@dataclass
class SegmentConfig:
    weight: float = 1.0
    kind_weights: Dict[str, float] = field(default_factory=dict)  # missing kinds weigh 1
    abandonment: Optional[float] = None  # this segment's share with no next intent; null = intents.abandonment


@dataclass
class IntentConfig:
    related_boost: float = 3.0     # weight × this for the facets the current one leads to (1 = v1: no effect)
    derived_related: int = 2       # a facet without `related` in the world: its answer's k nearest facets (0 = v1)
    covered_weight: float = 0.2    # weight × this for facets the current answer already answers (1 = v1)
    follow_up_share: float = 0.7   # probability mass of the conversation's own follow-ups (0 = v1: none)
    abandonment: float = 0.3       # share of users with no next intent, who click nothing (0 = v1)


@dataclass
class AnsweredConfig:
    penalty: float = 3.0    # logit drop for a suggestion the answer already covers (0 = off, v1)
    threshold: float = 0.5  # cosine to the answer from which the drop starts; full drop at cosine 1


@dataclass
class SimulatorConfig:
    enabled: bool = True  # false (simulator=none): no simulated users and no oracle; every stage works offline
    world: Optional[str] = None
    domains: Optional[List[str]] = None  # only topics of these domains; null = every topic of the world
    examination: List[float] = field(default_factory=lambda: [0.9, 0.6, 0.4])
    alpha: float = 12.0
    beta: float = 0.3
    discrimination: float = 1.0          # d in match − d · mean match over the context's intents (0 = v1)
    answered: AnsweredConfig = field(default_factory=AnsweredConfig)
    noise_std: float = 1.0               # per-user logit propensity (0 = v1)
    quadrature_nodes: int = 24           # Gauss-Hermite nodes of the oracle's integral over the propensity
    satisfaction: float = 0.7            # P(stop after a click) (1 = v1: the cascade stops at the first click)
    intents: IntentConfig = field(default_factory=IntentConfig)
    similarity: str = "minilm"  # minilm | lexical
    embedder: str = "minilm-l6"
    quality: QualityConfig = field(default_factory=QualityConfig)
    segments: Dict[str, SegmentConfig] = field(default_factory=dict)  # empty = one segment, no tastes
