"""Diversity-aware assembly: the similarity invariants, the rules, and the report of short panels."""
from __future__ import annotations

import random

import numpy as np
import pytest

from clicks2pref.data.assembly import AssemblyConfig, LexicalEmbedder, assemble, assemble_panel, ngram_overlap
from clicks2pref.data.parsing import parse_suggestions

WORDS = ("can how what why is do basil eggs freeze dry store boil long fresh water leaves grow indoors cats "
         "toxic season salt cook cold warm").split()


class RandomEmbedder:
    """Deterministic random unit vectors per string, in few dimensions so near-duplicates are common."""

    def __init__(self, dim: int = 3, seed: int = 0):
        self.dim, self.rng, self.vecs = dim, np.random.default_rng(seed), {}

    def _vec(self, text):
        if text not in self.vecs:
            v = self.rng.normal(size=self.dim)
            self.vecs[text] = v / np.linalg.norm(v)
        return self.vecs[text]

    def cosine(self, a, b):
        return np.array([[float(self._vec(x) @ self._vec(y)) for y in b] for x in a]).reshape(len(a), len(b))


def random_question(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + "?"


@pytest.mark.parametrize("embedder", [RandomEmbedder(), LexicalEmbedder()], ids=["random", "lexical"])
def test_no_two_picks_exceed_the_thresholds(embedder):
    rng = random.Random(0)
    cfg = AssemblyConfig(max_cosine=0.5, max_ngram_overlap=0.34, similarity="lexical")
    full = 0
    for _ in range(300):
        cands = [random_question(rng) for _ in range(rng.randint(0, 12))]
        picks, _ = assemble_panel(cands, "How do I store basil?", embedder, cfg)
        assert len(picks) <= cfg.k
        full += len(picks) == cfg.k
        if picks:
            cos = embedder.cosine(picks, picks)
            for i in range(len(picks)):
                for j in range(i):
                    assert cos[i, j] <= cfg.max_cosine
                    assert ngram_overlap(picks[i], picks[j], cfg.ngram) <= cfg.max_ngram_overlap
    assert full > 30  # the invariant is not met by emptiness


def test_near_duplicates_rules_and_order():
    cfg = AssemblyConfig(similarity="lexical", max_cosine=0.8, max_ngram_overlap=0.5)
    cands = ["Can I freeze basil?", "Can I freeze basil leaves?", "basil", "How do I store basil?",
             "How long does basil last in the fridge?", "Is basil toxic to cats?", "Why is my basil black?"]
    picks, rejected = assemble_panel(cands, "How do I store basil?", LexicalEmbedder(), cfg)
    assert picks == ["Can I freeze basil?", "How long does basil last in the fridge?", "Is basil toxic to cats?"]
    assert rejected["length"] == 1 and rejected["copies_question"] == 1
    assert rejected["cosine"] + rejected["ngram"] == 1  # "Can I freeze basil leaves?"


def test_assembly_off_takes_the_first_distinct_candidates():
    cfg = AssemblyConfig(enabled=False)
    cands = ["Can I freeze basil?", "can i freeze basil", "Can I freeze basil leaves?", "basil"]
    picks, rejected = assemble_panel(cands, None, None, cfg)
    assert picks == ["Can I freeze basil?", "Can I freeze basil leaves?", "basil"] and rejected["duplicate"] == 1


def test_report_says_why_panels_are_short():
    ctx = [{"role": "user", "content": "How do I store basil?"}, {"role": "assistant", "content": "In water."}]
    group = lambda name, texts: {"group": name, "context": ctx, "candidates": [  # noqa: E731
        {"text": t, "source": "teacher" if name == "full" else "click"} for t in texts]}
    groups = [group("full", ["Can I freeze basil?", "Is basil toxic to cats?", "Why is my basil black?"]),
              group("empty", []),
              group("two", ["Can I freeze basil?", "Is basil toxic to cats?"]),
              group("rules", ["basil", "ok", "Can I freeze basil?", "Is basil toxic to cats?"]),
              group("similar", ["Can I freeze basil?", "Can I freeze basil leaves?", "Can I freeze fresh basil?"])]
    examples, report = assemble(groups, LexicalEmbedder(), AssemblyConfig(similarity="lexical", max_cosine=0.8))
    assert [e["group"] for e in examples] == ["full"] and examples[0]["source"] == "teacher"
    assert parse_suggestions(examples[0]["target"], 3).well_formed
    assert report["full_panels"] == 1 and report["contexts"] == 5
    assert report["short_panels"] == {"no_candidates": 1, "fewer_than_k_candidates": 1, "rejected_by_rules": 1,
                                      "rejected_as_similar": 1}


def test_minilm_assembly_rejects_paraphrases():
    from clicks2pref.data.assembly import build_embedder

    cfg = AssemblyConfig()  # MiniLM, max_cosine 0.85
    emb = build_embedder(cfg)
    cands = ["How long does fresh basil last in the fridge?",
             "How many days will fresh basil keep in the refrigerator?",
             "Can I freeze basil leaves?", "Is basil safe for cats?"]
    picks, rejected = assemble_panel(cands, None, emb, cfg)
    assert len(picks) == 3 and cands[1] not in picks and rejected["cosine"] == 1
    cos = emb.cosine(picks, picks)
    assert (cos[np.triu_indices(3, 1)] <= cfg.max_cosine).all()
