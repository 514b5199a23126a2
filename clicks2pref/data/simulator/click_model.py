"""The click model and its exact oracle CTR (SPEC section 4).

A user of a segment has a hidden next intent f* (or none: `users.py`). Position k is examined with
probability e_k; an examined suggestion s is clicked with probability

    a(s | f*) = sigmoid(alpha * (match(s, f*) - beta) + quality(s) + answered(s) + eps),

eps ~ N(0, noise_std²) a per-user propensity shared by the panel. After a click the user is satisfied
and stops with probability `satisfaction`, else scans on (DBN, Chapelle & Zhang 2009; `satisfaction: 1`
is the cascade's stop at the first click, DCM's λ is 1 − satisfaction). The oracle is P(at least one
click) marginalised over segments, intents and eps: 1 − Π_k (1 − e_k a_k) for each (segment, intent),
integrated over eps by Gauss-Hermite quadrature (exact for noise 0). Satisfaction changes how many
clicks a user gives, not whether they click, so it leaves the oracle unchanged.

Users are drawn in batches (`ClickSimulator.sample_users`): a panel's logits (embeddings, match, quality,
one row per intent) are computed once, then n users' segments, intents, propensities, position orders,
examinations, clicks and satisfactions are drawn as arrays from one `numpy.random.Generator`.

Two switches make a suggestion attractive for pointing at *this* user's need (both off in v1):
- `discrimination` d: match(s, f) − d · mean over the context's intents g of match(s, g). A question
  equally near every intent of the topic (a topic heading) loses what it gains from vagueness; a
  question that names one intent keeps it. Users recognise their own question, not the topic.
- `answered`: a suggestion close to the assistant's answer just given asks what was already said;
  its logit drops by up to `answered_penalty` as its cosine to the answer rises past the threshold.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from omegaconf import OmegaConf

from clicks2pref.data.simulator.config import SimulatorConfig
from clicks2pref.data.simulator.quality import duplicate_penalties, suggestion_penalties
from clicks2pref.data.simulator.similarity import EmbeddingSimilarity, LexicalSimilarity
from clicks2pref.data.simulator.users import Intents, intent_distribution, intent_id
from clicks2pref.data.simulator.world import Topic, context_messages, load_world
from clicks2pref.models.registry import load_sentence_embedder


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ctr_given_attraction(attraction: np.ndarray, examination: Sequence[float]) -> np.ndarray:
    """P(at least one click) for each row of attraction [..., K]: 1 - prod_k (1 - e_k a_k).

    Neither the cascade stop nor satisfaction changes this probability: they only decide later clicks.
    """
    e = np.asarray(examination[: attraction.shape[-1]], dtype=float)
    return 1.0 - np.prod(1.0 - e * attraction, axis=-1)


def ctr_given_logits(logits: np.ndarray, examination: Sequence[float], noise_std: float, nodes: int) -> np.ndarray:
    """E_eps[P(at least one click)] for each row of logits [..., K], eps ~ N(0, noise_std²) shared by the row."""
    if noise_std == 0:
        return ctr_given_attraction(sigmoid(logits), examination)
    t, w = np.polynomial.hermite.hermgauss(nodes)  # ∫ exp(-t²) g(t) dt ≈ Σ w g(t); eps = √2 σ t
    eps = np.sqrt(2.0) * noise_std * t
    per_node = ctr_given_attraction(sigmoid(logits[..., None, :] + eps[:, None]), examination)
    return per_node @ w / np.sqrt(np.pi)


def sample_clicks(attraction: np.ndarray, examination: Sequence[float], satisfaction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Clicks [n, K] of n users, each on their row of attraction [n, K]: position k is examined with
    probability e_k and clicked with a_k; after a click the user stops with probability `satisfaction`
    (1: the cascade's stop at the first click), else scans on."""
    n, k = attraction.shape
    e = np.asarray(examination[:k], dtype=float)
    would_click = (rng.random((n, k)) < e) & (rng.random((n, k)) < attraction)
    satisfied = rng.random((n, k)) < satisfaction
    clicks = np.zeros((n, k), dtype=bool)
    scanning = np.ones(n, dtype=bool)
    for j in range(k):  # positions in order, users in parallel
        clicks[:, j] = scanning & would_click[:, j]
        scanning &= ~(clicks[:, j] & satisfied[:, j])
    return clicks.astype(np.int64)


def generator_from(rng: random.Random) -> np.random.Generator:
    """A numpy Generator seeded from a `random.Random` stream: a caller's one seed decides both."""
    return np.random.default_rng(rng.getrandbits(64))


@dataclass
class Click:
    clicks: list[int]
    segment: str
    intent: str  # "" for a user with no next intent


@dataclass
class Users:
    """n simulated users of one panel: what each saw, clicked and was."""
    order: np.ndarray    # [n, K] the suggestion (index into the panel) each user saw at position k
    clicks: np.ndarray   # [n, K] 0/1 by position shown
    segment: np.ndarray  # [n] index into Intents.segments
    intent: np.ndarray   # [n] index into Intents.intents; −1: no next intent


@dataclass(frozen=True)
class PanelLogits:
    """What every user of a panel shares, suggestions in the order given. Only the duplicate penalty depends on
    the order a user sees (the lower of two repeats is skipped), so it is added per order."""
    base: np.ndarray    # [F, K] alpha · (match − beta) + each suggestion's own penalties, a row per intent
    within: np.ndarray  # [K, K] similarity between the panel's suggestions


class ClickSimulator:
    """World + users + click model. Holds the similarity cache, so it is a class."""

    def __init__(self, cfg: SimulatorConfig, similarity, world: Optional[dict[str, Topic]] = None):
        self.cfg, self.sim = cfg, similarity
        self.world = world if world is not None else load_world(cfg.world, cfg.domains)
        self.sim.prefetch(q for t in self.world.values() for f in t.facets
                          for q in (*f.questions, *(q for u in f.follow_ups for q in u.questions)))
        self._related = self._derive_related(cfg.intents.derived_related)
        self._intents: dict[tuple[str, str], Intents] = {}

    def _derive_related(self, k: int) -> dict[tuple[str, str], tuple[str, ...]]:
        """For facets whose world lists no `related`: the k facets whose question is nearest the answer."""
        out = {}
        for t in self.world.values():
            for f in t.facets:
                if f.related or not k:
                    continue
                others = [g for g in t.facets if g.id != f.id]
                sims = self.sim.matrix([f.answer], [g.question for g in others])[0]
                out[(t.id, f.id)] = tuple(others[i].id for i in np.argsort(-sims, kind="stable")[:k])
        return out

    def intents(self, topic_id: str, facet_id: str) -> Intents:
        key = (topic_id, facet_id)
        if key not in self._intents:
            self._intents[key] = intent_distribution(self.world[topic_id], facet_id, self.cfg.segments,
                                                     self.cfg.intents, self._related.get(key))
        return self._intents[key]

    def context(self, topic_id: str, facet_id: str, rng: Optional[random.Random] = None) -> list[dict]:
        topic = self.world[topic_id]
        return context_messages(topic, topic.facet(facet_id), rng)

    def panel(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> PanelLogits:
        """The panel's logits before the duplicate penalty: embeddings, match, quality, a row per intent f*."""
        if len(suggestions) > len(self.cfg.examination):
            raise ValueError(f"panel has {len(suggestions)} suggestions but simulator.examination covers "
                             f"{len(self.cfg.examination)} positions")
        topic, cfg = self.world[topic_id], self.cfg
        intents = self.intents(topic_id, facet_id).intents
        s = list(suggestions)
        if not s:
            return PanelLogits(np.zeros((len(intents), 0)), np.zeros((0, 0)))
        current = topic.facet(facet_id)
        quality = suggestion_penalties(s, self.sim.matrix(s, list(current.questions)).max(axis=1), cfg.quality)
        match = np.stack([self.sim.matrix(s, list(f.questions)).max(axis=1) for f in intents])  # [F, K]
        if cfg.discrimination:
            match = match - cfg.discrimination * match.mean(axis=0, keepdims=True)
        if cfg.answered.penalty:
            cos = self.sim.matrix(s, [current.answer])[:, 0]
            quality = quality - cfg.answered.penalty * np.clip(
                (cos - cfg.answered.threshold) / (1 - cfg.answered.threshold), 0.0, 1.0)
        return PanelLogits(cfg.alpha * (match - cfg.beta) + quality[None, :], self.sim.matrix(s, s))

    def logits(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> np.ndarray:
        """The attraction logit of every position k (columns) for every candidate intent f* (rows)."""
        p = self.panel(topic_id, facet_id, suggestions)
        return p.base + duplicate_penalties(p.within, self.cfg.quality)[None, :]

    def attraction(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> np.ndarray:
        """a(s_k | f*) of a user with no propensity offset, for every intent (rows) and position (columns)."""
        return sigmoid(self.logits(topic_id, facet_id, suggestions))

    def oracle_ctr(self, topic_id: str, facet_id: str, suggestions: Sequence[str]) -> float:
        """Exact expected CTR: Σ over segments and intents of P(seg) P(f*|seg) E_eps[P(any click | f*, eps)]."""
        if not suggestions:
            return 0.0
        it = self.intents(topic_id, facet_id)
        per_intent = ctr_given_logits(self.logits(topic_id, facet_id, suggestions), self.cfg.examination,
                                      self.cfg.noise_std, self.cfg.quadrature_nodes)
        return float(it.segment_p @ it.intent_p @ per_intent)

    def oracle_ctr_many(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> np.ndarray:
        """oracle_ctr for many (topic, facet, suggestions), embedding every suggestion in one batch."""
        self.sim.prefetch(s for _, _, panel in items for s in panel)
        if self.cfg.answered.penalty:
            self.sim.prefetch(self.world[t].facet(f).answer for t, f, _ in items)
        return np.array([self.oracle_ctr(t, f, p) for t, f, p in items])

    def sample_users(self, topic_id: str, facet_id: str, suggestions: Sequence[str], n: int,
                     rng: np.random.Generator, shuffle: bool = False) -> Users:
        """n users of the panel: each draws a fresh order of the suggestions (with `shuffle`), a segment, a hidden
        intent or none and a propensity eps, then scans and clicks (`sample_clicks`). The panel's logits are
        computed once; every draw is a vector over the users."""
        k, cfg = len(suggestions), self.cfg
        order = np.tile(np.arange(k), (n, 1))
        if shuffle and k > 1:
            order = rng.permuted(order, axis=1)
        segment, intent = self.intents(topic_id, facet_id).draw(n, rng)
        eps = rng.normal(0.0, cfg.noise_std, (n, 1))
        p = self.panel(topic_id, facet_id, suggestions)
        within = p.within[order[:, :, None], order[:, None, :]]  # [n, K, K] in each user's order
        logits = p.base[np.maximum(intent, 0)[:, None], order] + duplicate_penalties(within, cfg.quality) + eps
        attraction = np.where(intent[:, None] >= 0, sigmoid(logits), 0.0)  # no next intent: nothing attracts
        return Users(order, sample_clicks(attraction, cfg.examination, cfg.satisfaction, rng), segment, intent)

    def sample(self, topic_id: str, facet_id: str, suggestions: Sequence[str], rng: random.Random) -> Click:
        """One user of the panel as given (`sample_users` with n = 1, seeded from `rng`), for callers that draw
        users one at a time; the users of one panel are drawn together by `sample_users`."""
        u = self.sample_users(topic_id, facet_id, suggestions, 1, generator_from(rng))
        it, f = self.intents(topic_id, facet_id), int(u.intent[0])
        intent = intent_id(self.world[topic_id].facet(facet_id), it.intents[f]) if f >= 0 else ""
        return Click(u.clicks[0].tolist(), it.segments[int(u.segment[0])], intent)


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
