"""A reward model's scores on disk: one SQLite file per model under its rm artifact key, read by every scorer that
scores with the model, so a suggestion in a conversation is scored once, ever."""
from __future__ import annotations

import json

import pytest
import torch

from clicks2pref.models.score_cache import ScoreStore, SuggestionScorer, context_key, score_store
from clicks2pref.rewards.base import RewardBatch, RewardResources

CONTEXT = [{"role": "user", "content": "How do I store fresh basil?"},
           {"role": "assistant", "content": "Keep the stems in a glass of water."}]
OTHER = [{"role": "user", "content": "How do I dry mint?"}, {"role": "assistant", "content": "Hang it upside down."}]


class Counting:
    """A head's outputs ({"mu", "sigma"}) from the suggestion's length; counts what it was asked to score."""

    def __init__(self):
        self.seen = []

    def __call__(self, contexts, suggestions):
        self.seen += [(context_key(c), s) for c, s in zip(contexts, suggestions)]
        n = torch.tensor([float(len(s)) for s in suggestions])
        return {"mu": n / 10, "sigma": n / 100 + 0.5}


def test_a_store_round_trips_scores_and_shares_them_between_scorers(tmp_path):
    store = ScoreStore(tmp_path / "garm.sqlite")
    assert store.get_many([(context_key(CONTEXT), "a")]) == {} and len(store) == 0
    first, second = Counting(), Counting()
    a = SuggestionScorer(first, store=store).lookup([CONTEXT, CONTEXT, OTHER], ["Why?", "Why?", "Why?"])
    assert len(first.seen) == 2  # a repeat within a call is scored once
    b = SuggestionScorer(second, store=ScoreStore(tmp_path / "garm.sqlite")).lookup(
        [OTHER, CONTEXT, CONTEXT], ["Why?", "Why?", "How long?"])
    assert second.seen == [(context_key(CONTEXT), "How long?")]  # a fresh scorer (a later run) reads the file
    assert b[:2] == [a[2], a[0]] and a[0] == pytest.approx({"mu": 0.4, "sigma": 0.54})
    assert len(store) == 3


def test_a_trained_reward_model_has_its_store_under_its_rm_key(tmp_path):
    folder = tmp_path / "artifacts" / "rm" / "abc123" / "garm"
    folder.mkdir(parents=True)
    assert score_store(folder) is None  # not a finished rm artifact (no rm.json yet)
    (folder.parent / "rm.json").write_text(json.dumps({"key": "abc123"}))
    assert score_store(str(folder)).path == tmp_path / "artifacts" / "scores" / "rm" / "abc123" / "garm.sqlite"
    assert score_store(tmp_path / "exported") is None and score_store(object()) is None

    # a reward component's scorer (RewardResources.scorer keyed (kind, path)) uses that store
    resources = RewardResources({"garm": str(folder)})
    scorer = resources.scorer(("garm", None), Counting())
    scorer(RewardBatch([CONTEXT], ["1. Why?\n2. How long?"]))
    assert scorer.store.path == score_store(folder).path and len(scorer.store) == 2
    assert resources.scorer(("external", "some/hub-model", "mean"), Counting()).store is None


def test_an_unwritable_store_only_costs_the_recomputation(tmp_path):
    (tmp_path / "file").write_text("")  # a file where the store's folder should be: nothing can be written there
    scorer = SuggestionScorer(Counting(), store=ScoreStore(tmp_path / "file" / "garm.sqlite"))
    assert scorer.lookup([CONTEXT], ["Why?"]) == [pytest.approx({"mu": 0.4, "sigma": 0.54})]
    assert not scorer.store.writable
