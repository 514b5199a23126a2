"""The simulator's settings as typed config (`conf/simulator/`): plain dataclasses, no torch, so that
checking a config stays cheap. The defaults are the contextual user model's (`conf/simulator/contextual.yaml`);
`conf/simulator/v1.yaml` turns each of its switches off."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from clicks2pref.data.simulator.quality import QualityConfig
from clicks2pref.data.simulator.users import IntentConfig, SegmentConfig


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
