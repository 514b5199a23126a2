"""The simulator's world: topics, facets and their questions, loaded from YAML shipped in the package."""
from __future__ import annotations

import glob
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from clicks2pref.errors import Clicks2PrefError

KINDS = ("howto", "cost", "safety", "background", "comparison", "planning")
PACKAGED_WORLD = Path(__file__).resolve().parent.parent / "world"


class WorldError(Clicks2PrefError):
    """A world file breaks the format."""


@dataclass(frozen=True)
class Facet:
    id: str
    kind: str
    popularity: float
    question: str
    paraphrases: tuple[str, ...]
    answer: str

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


def _facet(raw: dict, where: str) -> Facet:
    for key in ("id", "kind", "popularity", "question", "answer"):
        if key not in raw:
            raise WorldError(f"{where}: facet is missing '{key}'")
    if raw["kind"] not in KINDS:
        raise WorldError(f"{where}: facet '{raw['id']}' kind '{raw['kind']}' is not one of {', '.join(KINDS)}")
    if not float(raw["popularity"]) > 0:
        raise WorldError(f"{where}: facet '{raw['id']}' popularity must be > 0")
    return Facet(str(raw["id"]), raw["kind"], float(raw["popularity"]), str(raw["question"]),
                 tuple(str(p) for p in raw.get("paraphrases") or ()), str(raw["answer"]))


def load_world(source: Optional[str] = None) -> dict[str, Topic]:
    """Topics by id from a folder or glob of YAML files (default: the packaged world)."""
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
            topics[raw["id"]] = Topic(raw["id"], raw.get("domain", ""), raw.get("title", raw["id"]), facets)
    return topics


def context_messages(topic: Topic, facet: Facet, rng: Optional[random.Random] = None) -> list[dict]:
    """The conversation so far: the user's question about `facet` (a random phrasing) and its answer."""
    question = rng.choice(facet.questions) if rng is not None else facet.question
    return [{"role": "user", "content": question}, {"role": "assistant", "content": facet.answer}]


def split_contexts(world: dict[str, Topic], val_fraction: float, test_fraction: float,
                   seed: int) -> dict[str, list[tuple[str, str]]]:
    """(topic, current facet) pairs split into train/val/test, so no test context is ever logged."""
    pairs = sorted((t.id, f.id) for t in world.values() for f in t.facets)
    random.Random(seed).shuffle(pairs)
    n_test, n_val = round(len(pairs) * test_fraction), round(len(pairs) * val_fraction)
    return {"test": sorted(pairs[:n_test]), "val": sorted(pairs[n_test:n_test + n_val]),
            "train": sorted(pairs[n_test + n_val:])}
