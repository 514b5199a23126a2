"""The simulator's world: topics, facets and their questions, loaded from YAML shipped in the package.

A facet may say where its conversation goes next (all optional, so a world written for the first user
model loads unchanged): `related` lists the topic's facets this conversation naturally leads to,
`covers` the facets its answer already answers, and `follow_ups` the questions that only this
conversation leads to (they pick up something the answer mentions or leaves open).
"""
from __future__ import annotations

import glob
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import yaml

from clicks2pref.config.data import SPLIT_BY
from clicks2pref.errors import Clicks2PrefError

KINDS = ("howto", "cost", "safety", "background", "comparison", "planning")  # the kinds every v1 topic uses
PACKAGED_WORLD = Path(__file__).resolve().parent.parent / "world"
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


class WorldError(Clicks2PrefError):
    """A world file breaks the format."""


@dataclass(frozen=True)
class FollowUp:
    """A next question that only one conversation leads to: an intent of that context alone."""
    id: str
    kind: str
    popularity: float
    question: str
    paraphrases: tuple[str, ...]

    @property
    def questions(self) -> tuple[str, ...]:
        return (self.question, *self.paraphrases)


@dataclass(frozen=True)
class Facet:
    id: str
    kind: str
    popularity: float
    question: str
    paraphrases: tuple[str, ...]
    answer: str
    related: tuple[str, ...] = ()
    covers: tuple[str, ...] = ()
    follow_ups: tuple[FollowUp, ...] = ()

    @property
    def questions(self) -> tuple[str, ...]:
        return (self.question, *self.paraphrases)


@dataclass(frozen=True)
class Topic:
    id: str
    domain: str
    title: str
    facets: tuple[Facet, ...]

    def facet(self, facet_id: str) -> Facet:
        for f in self.facets:
            if f.id == facet_id:
                return f
        raise KeyError(f"topic '{self.id}' has no facet '{facet_id}'")


def _require(raw: dict, keys: Sequence[str], where: str, what: str) -> None:
    for key in keys:
        if key not in raw:
            raise WorldError(f"{where}: {what} is missing '{key}'")


def _popularity(raw: dict, where: str) -> float:
    if not float(raw["popularity"]) > 0:
        raise WorldError(f"{where}: '{raw['id']}' popularity must be > 0")
    return float(raw["popularity"])


def _follow_up(raw: dict, kind: str, where: str) -> FollowUp:
    _require(raw, ("id", "question"), where, "follow-up")
    return FollowUp(str(raw["id"]), str(raw.get("kind", kind)), _popularity({"popularity": 1.0, **raw}, where),
                    str(raw["question"]), tuple(str(p) for p in raw.get("paraphrases") or ()))


def _facet(raw: dict, where: str) -> Facet:
    _require(raw, ("id", "kind", "popularity", "question", "answer"), where, "facet")
    if not _IDENT.match(str(raw["kind"])):
        raise WorldError(f"{where}: facet '{raw['id']}' kind '{raw['kind']}' is not a lowercase snake_case word")
    fw = f"{where} facet '{raw['id']}'"
    follow_ups = tuple(_follow_up(u, raw["kind"], fw) for u in raw.get("follow_ups") or ())
    if len({u.id for u in follow_ups}) != len(follow_ups):
        raise WorldError(f"{fw}: follow-up ids must be unique")
    return Facet(str(raw["id"]), raw["kind"], _popularity(raw, where), str(raw["question"]),
                 tuple(str(p) for p in raw.get("paraphrases") or ()), str(raw["answer"]),
                 tuple(str(r) for r in raw.get("related") or ()), tuple(str(c) for c in raw.get("covers") or ()),
                 follow_ups)


def _check_links(topic: Topic, where: str) -> None:
    ids = {f.id for f in topic.facets}
    for f in topic.facets:
        for field, linked in (("related", f.related), ("covers", f.covers)):
            bad = [x for x in linked if x not in ids or x == f.id]
            if bad:
                raise WorldError(f"{where}: facet '{f.id}' {field} {bad} are not other facets of the topic")
        clash = [u.id for u in f.follow_ups if u.id in ids]
        if clash:
            raise WorldError(f"{where}: facet '{f.id}' follow-up ids {clash} equal facet ids of the topic")


def load_world(source: Optional[str] = None, domains: Optional[Sequence[str]] = None) -> dict[str, Topic]:
    """Topics by id from a folder or glob of YAML files (default: the packaged world), optionally only `domains`."""
    pattern = str(PACKAGED_WORLD / "*.yaml") if source is None else source
    if Path(pattern).is_dir():
        pattern = str(Path(pattern) / "*.yaml")
    files = sorted(glob.glob(pattern))
    if not files:
        raise WorldError(f"simulator.world: no YAML files match '{pattern}'")
    topics: dict[str, Topic] = {}
    for path in files:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        for raw in data.get("topics", []):
            where = f"{path}: topic '{raw.get('id')}'"
            if raw.get("id") in topics:
                raise WorldError(f"{where}: duplicate topic id")
            facets = tuple(_facet(f, where) for f in raw.get("facets", []))
            if len(facets) < 2 or len({f.id for f in facets}) != len(facets):
                raise WorldError(f"{where}: needs at least two facets with unique ids")
            topic = Topic(raw["id"], raw.get("domain", ""), raw.get("title", raw["id"]), facets)
            _check_links(topic, where)
            if domains is None or topic.domain in domains:
                topics[raw["id"]] = topic
    if not topics:
        raise WorldError(f"simulator.domains: no topic of '{pattern}' is in domains {list(domains or [])}")
    return topics


def context_messages(topic: Topic, facet: Facet, rng: Optional[random.Random] = None) -> list[dict]:
    """The conversation so far: the user's question about `facet` (a random phrasing) and its answer."""
    question = rng.choice(facet.questions) if rng is not None else facet.question
    return [{"role": "user", "content": question}, {"role": "assistant", "content": facet.answer}]


def split_contexts(world: dict[str, Topic], val_fraction: float, test_fraction: float, seed: int,
                   by: str = "context") -> dict[str, list[tuple[str, str]]]:
    """(topic, current facet) pairs split into train/val/test, so no test context is ever logged.

    `by="topic"` holds out whole topics: a test topic's intents and words were never in any log, so a
    claim measures generalisation to new conversations rather than new openings of known ones.
    """
    if by not in SPLIT_BY:
        raise WorldError(f"data.split.by '{by}' is not one of {', '.join(SPLIT_BY)}")
    units = sorted(world) if by == "topic" else sorted((t.id, f.id) for t in world.values() for f in t.facets)
    random.Random(seed).shuffle(units)
    n_test, n_val = round(len(units) * test_fraction), round(len(units) * val_fraction)
    parts = {"test": units[:n_test], "val": units[n_test:n_test + n_val], "train": units[n_test + n_val:]}
    if by == "topic":
        parts = {k: [(t, f.id) for t in v for f in world[t].facets] for k, v in parts.items()}
    return {k: sorted(v) for k, v in parts.items()}


def context_splits(world: dict[str, Topic], split) -> dict[str, list[tuple[str, str]]]:
    """`split_contexts` with the settings of `data.split` (val_fraction, test_fraction, seed, by)."""
    return split_contexts(world, split.val_fraction, split.test_fraction, split.seed, split.by)
