"""A per-suggestion score cache keyed by (conversation, suggestion), shared by reward components and the rm
stage's evaluations: the same suggestion in the same conversation goes through a model once.

A trained reward model's scores also live on disk (`ScoreStore`, one SQLite file per model under its rm artifact
key: `<artifacts>/scores/rm/<key>/<kind>.sqlite`, `score_store`), so the evaluation's best-of rerank, its offline
estimator and every later run that scores with the same model read what any of them already scored: a
suggestion in a conversation goes through a reward model once, ever. What is stored is the head's outputs before
κ or a click link ({"mu", "sigma"} or {"reward"}), so every setting on top of them shares one entry. The rm key
covers the model's weights and the code that scores them; a store that cannot be written (a read-only folder, a
lock held too long) only costs the recomputation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from torch import Tensor

log = logging.getLogger(__name__)
RM_MARKER = "rm.json"  # the rm stage's result file: a reward-model folder beside it is an rm artifact


def context_key(context: list[dict]) -> str:
    """A conversation's turns as one exact string (the cache's key; `data.pairs.context_key` is a short hash)."""
    return json.dumps([[t["role"], t["content"]] for t in context], ensure_ascii=False)


class ScoreStore:
    """(conversation key, suggestion) -> a score (a float or {output name: float}) in an SQLite file, read and
    written many at a time; safe to share between processes (SQLite's locking)."""

    CHUNK = 500  # keys per query (SQLite's parameter limit is 999 on old builds)

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.writable = True

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in a transaction (committed on leaving), closed afterwards."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                db.execute("CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, value TEXT NOT NULL) "
                           "WITHOUT ROWID")
                yield db
        finally:
            db.close()

    @staticmethod
    def digest(key: tuple[str, str]) -> bytes:
        return hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).digest()[:16]

    def get_many(self, keys: Iterable[tuple[str, str]]) -> dict:
        """The stored scores of those of `keys` that are stored."""
        by_digest = {self.digest(k): k for k in keys}
        if not by_digest or not self.path.exists():
            return {}
        found = {}
        try:
            with self._connect() as db:
                digests = list(by_digest)
                for i in range(0, len(digests), self.CHUNK):
                    chunk = digests[i:i + self.CHUNK]
                    rows = db.execute(f"SELECT key, value FROM scores WHERE key IN ({','.join('?' * len(chunk))})",
                                      chunk).fetchall()
                    found.update({by_digest[bytes(d)]: json.loads(v) for d, v in rows})
        except sqlite3.Error as e:
            log.warning("score cache %s unreadable (%s): scoring again", self.path, e)
            return {}
        return found

    def put_many(self, scores: dict) -> None:
        """Store `scores` ({(conversation key, suggestion): score}); an unwritable store warns once."""
        if not scores or not self.writable:
            return
        try:
            with self._connect() as db:
                db.executemany("INSERT OR IGNORE INTO scores (key, value) VALUES (?, ?)",
                               [(self.digest(k), json.dumps(v)) for k, v in scores.items()])
        except (sqlite3.Error, OSError) as e:
            self.writable = False
            log.warning("score cache %s not written (%s): later runs score these suggestions again", self.path, e)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]


def score_store(source) -> Optional[ScoreStore]:
    """The on-disk score cache of a reward model given as its folder: for an rm artifact
    (`<artifacts>/rm/<key>/<kind>`), `<artifacts>/scores/rm/<key>/<kind>.sqlite`; None for anything else (a
    loaded model, an exported or hub model, which have no artifact key)."""
    if not isinstance(source, (str, Path)):
        return None
    folder = Path(source).expanduser().resolve()
    if not (folder.parent / RM_MARKER).is_file() or folder.parent.parent.name != "rm":
        return None
    return ScoreStore(folder.parents[2] / "scores" / "rm" / folder.parent.name / f"{folder.name}.sqlite")


@dataclass
class SuggestionScorer:
    """Per-suggestion scores with a cache keyed by (context, suggestion): a GRPO group repeats suggestions,
    and probe contexts recur, so each distinct pair goes through the reward model once; with a `store`, once
    ever (`ScoreStore`)."""

    # (contexts, suggestions) -> one score each, or {output name: one value each} (a reward model's head
    # outputs, cached before κ or a click link so that components differing only in those share one pass)
    score_fn: Callable[[list[list[dict]], list[str]], Union[Tensor, dict[str, Tensor]]]
    max_cache: int = 100_000
    cache: dict = field(default_factory=dict)
    store: Optional[ScoreStore] = None

    def __call__(self, batch) -> list[list[float]]:
        """Scores per panel of a `rewards.base.RewardBatch` (its `contexts` and parsed `panels`)."""
        contexts = [c for c, panel in zip(batch.contexts, batch.panels) for _ in panel]
        values = iter(self.lookup(contexts, [s for panel in batch.panels for s in panel]))
        return [[next(values) for _ in panel] for panel in batch.panels]

    def lookup(self, contexts: Sequence[list[dict]], suggestions: Sequence[str]) -> list:
        """One score (or {output name: value}) per (context, suggestion), scoring only pairs not seen before."""
        context_keys: dict[int, str] = {}  # a context repeated per suggestion is keyed once
        for c in contexts:
            if id(c) not in context_keys:
                context_keys[id(c)] = context_key(c)
        keys = [(context_keys[id(c)], s) for c, s in zip(contexts, suggestions)]
        if self.store is not None:
            unseen = [k for k in dict.fromkeys(keys) if k not in self.cache]
            if unseen:
                self.remember(self.store.get_many(unseen))
        todo = {}
        for key, context, s in zip(keys, contexts, suggestions):
            if key not in self.cache:
                todo.setdefault(key, (context, s))
        known = {k: self.cache[k] for k in keys if k in self.cache}
        if todo:
            items = list(todo.values())
            scores = self.score_fn([c for c, _ in items], [s for _, s in items])
            new = dict(zip(todo, per_item(scores)))
            known.update(new)
            self.remember(new)
            if self.store is not None:
                self.store.put_many(new)
        return [known[k] for k in keys]

    def remember(self, scores: dict) -> None:
        if len(self.cache) + len(scores) > self.max_cache:
            self.cache.clear()
        self.cache.update(scores)


def per_item(scores: Union[Tensor, dict[str, Tensor]]) -> list:
    """A float per item, or a {name: float} per item from a dict of per-item tensors."""
    if isinstance(scores, dict):
        columns = {k: v.tolist() for k, v in scores.items()}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return [float(x) for x in scores]
