"""The position-based cascade click model and its closed-form oracle CTR (SPEC section 4).

Position k is examined with probability e_k; an examined suggestion s is clicked with probability
a(s | f*) = sigmoid(alpha * (match(s, f*) - beta) + quality(s)); scanning stops at the first click.
The oracle is P(at least one click) marginalised over segments and intents, with no sampling.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from omegaconf import OmegaConf

from clicks2pref.data.simulator.quality import QualityConfig, quality_logits
from clicks2pref.data.simulator.similarity import EmbeddingSimilarity, LexicalSimilarity
from clicks2pref.data.simulator.users import SegmentConfig, intent_distribution
from clicks2pref.data.simulator.world import Topic, context_messages, load_world
from clicks2pref.models.registry import load_sentence_embedder


@dataclass
class SimulatorConfig:
    world: Optional[str] = None
    examination: List[float] = field(default_factory=lambda: [0.9, 0.6, 0.4])
    alpha: float = 12.0
    beta: float = 0.62
    similarity: str = "minilm"  # minilm | lexical
    embedder: str = "minilm-l6"
    quality: QualityConfig = field(default_factory=QualityConfig)
    segments: Dict[str, SegmentConfig] = field(default_factory=dict)  # empty = one segment, no tastes


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ctr_given_attraction(attraction: np.ndarray, examination: Sequence[float]) -> np.ndarray:
    """P(at least one click) for each row of attraction [..., K]: 1 - prod_k (1 - e_k a_k).

    The cascade stop does not change this probability: it only decides which click is the first.
    """
    e = np.asarray(examination[: attraction.shape[-1]], dtype=float)
    return 1.0 - np.prod(1.0 - e * attraction, axis=-1)


def sample_cascade(attraction: np.ndarray, examination: Sequence[float], rng: random.Random) -> list[int]:
    """One user's clicks on a panel: scan in order, stop at the first click."""
    clicks = [0] * len(attraction)
    for k, a in enumerate(attraction):
        if rng.random() < examination[k] and rng.random() < a:
            clicks[k] = 1
            break
    return clicks


@dataclass
class Click:
    clicks: list[int]
    segment: str
    intent: str


class ClickSimulator:
    """World + users + click model. Holds the similarity cache, so it is a class."""

    def __init__(self, cfg: SimulatorConfig, similarity, world: Optional[dict[str, Topic]] = None):
        self.cfg, self.sim = cfg, similarity
        self.world = world if world is not None else load_world(cfg.world)
        self.sim.prefetch(q for t in self.world.values() for f in t.facets for q in f.questions)

    def context(self, topic_id: str, facet_id: str, rng: Optional[random.Random] = None) -> list[dict]:
        topic = self.world[topic_id]
        return context_messages(topic, topic.facet(facet_id), rng)

    def attraction(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> np.ndarray:
        """a(s_k | f*) for every candidate intent f* (rows, in intent order) and position k (columns)."""
        if len(suggestions) > len(self.cfg.examination):
            raise ValueError(f"panel has {len(suggestions)} suggestions but simulator.examination covers "
                             f"{len(self.cfg.examination)} positions")
        topic = self.world[topic_id]
        _, _, intents, _ = intent_distribution(topic, facet_id, self.cfg.segments)
        s = list(suggestions)
        if not s:
            return np.zeros((len(intents), 0))
        asked = topic.facet(facet_id).questions
        quality = quality_logits(s, self.sim.matrix(s, list(asked)).max(axis=1), self.sim.matrix(s, s),
                                 self.cfg.quality)
        match = np.stack([self.sim.matrix(s, list(f.questions)).max(axis=1) for f in intents])  # [F, K]
        return sigmoid(self.cfg.alpha * (match - self.cfg.beta) + quality[None, :])

    def oracle_ctr(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> float:
        """Exact expected CTR: sum over segments and intents of P(seg) P(f*|seg) P(any click | f*)."""
        if not suggestions:
            return 0.0
        _, seg_p, _, intent_p = intent_distribution(self.world[topic_id], facet_id, self.cfg.segments)
        per_intent = ctr_given_attraction(self.attraction(topic_id, facet_id, suggestions), self.cfg.examination)
        return float(seg_p @ intent_p @ per_intent)

    def oracle_ctr_many(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> np.ndarray:
        """oracle_ctr for many (topic, facet, suggestions), embedding every suggestion in one batch."""
        self.sim.prefetch(s for _, _, panel in items for s in panel)
        return np.array([self.oracle_ctr(t, f, p) for t, f, p in items])

    def sample(self, topic_id: str, facet_id: str, suggestions: Sequence[str], rng: random.Random) -> Click:
        """Draw a user (segment, hidden intent) and their clicks on the panel."""
        names, seg_p, intents, intent_p = intent_distribution(self.world[topic_id], facet_id, self.cfg.segments)
        seg = rng.choices(range(len(names)), weights=seg_p)[0]
        f = rng.choices(range(len(intents)), weights=intent_p[seg])[0]
        a = self.attraction(topic_id, facet_id, suggestions)[f]
        return Click(sample_cascade(a, self.cfg.examination, rng), names[seg], intents[f].id)


def build_simulator(cfg: SimulatorConfig, world: Optional[dict[str, Topic]] = None) -> ClickSimulator:
    """The simulator with the configured similarity backend."""
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_object(cfg)
    if cfg.similarity == "lexical":
        sim = LexicalSimilarity()
    elif cfg.similarity == "minilm":
        sim = EmbeddingSimilarity(load_sentence_embedder(cfg.embedder))
    else:
        raise ValueError(f"simulator.similarity '{cfg.similarity}' is not one of minilm, lexical")
    return ClickSimulator(cfg, sim, world)
