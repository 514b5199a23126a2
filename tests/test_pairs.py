"""Preference pairs from click logs: position filters, week splits, grouping by panel."""

import pytest

from clicks2pref.config.pairs import PairConfig
from clicks2pref.data.pairs import build_pairs, group_pairs, pair_splits, split_by_group

CTX = [{"role": "user", "content": "How do I store basil?"}, {"role": "assistant", "content": "In water, on the counter."}]
OTHER = [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Nine minutes."}]


def imp(iid, clicks, suggestions=("a?", "b?", "c?"), week=1, context=CTX, panel="p1", policy="prompt_x"):
    return {"impression_id": iid, "week": week, "policy": policy, "context": context, "suggestions": list(suggestions),
            "clicks": list(clicks), "panel_id": panel}


def sides(pairs):
    return sorted((p["chosen"], p["rejected"], p["chosen_pos"], p["rejected_pos"]) for p in pairs)


def test_skip_above_keeps_only_suggestions_shown_above_the_click():
    assert sides(build_pairs([imp("i1", [0, 0, 1])])) == [("c?", "a?", 3, 1), ("c?", "b?", 3, 2)]
    assert sides(build_pairs([imp("i2", [0, 1, 0])])) == [("b?", "a?", 2, 1)]
    assert build_pairs([imp("i3", [1, 0, 0])]) == []  # nothing above the first position
    assert build_pairs([imp("i4", [0, 0, 0])]) == []  # no click, no preference


def test_none_keeps_every_clicked_over_unclicked_pair():
    assert sides(build_pairs([imp("i1", [1, 0, 0])], "none")) == [("a?", "b?", 1, 2), ("a?", "c?", 1, 3)]
    assert sides(build_pairs([imp("i2", [0, 1, 0])], "none")) == [("b?", "a?", 2, 1), ("b?", "c?", 2, 3)]


def test_pair_records_carry_the_spec_fields():
    (pair,) = build_pairs([imp("w1-000007", [0, 1, 0], week=2)])
    assert pair["context"] == CTX and pair["impression_id"] == "w1-000007" and pair["week"] == 2
    assert pair["policy"] == "prompt_x" and pair["group"] == "prompt_x/p1"


def test_same_position_pairs_across_impressions_of_one_context():
    records = [imp("i1", [0, 1, 0], ("a?", "b?", "c?"), panel="p1"),
               imp("i2", [0, 0, 0], ("x?", "y?", "z?"), panel="p2"),
               imp("i3", [0, 0, 0], ("a?", "b?", "c?"), panel="p1"),       # same text at position 2: no pair
               imp("i4", [0, 0, 0], ("x?", "y?", "z?"), context=OTHER, panel="p3")]  # other context: no pair
    pairs = build_pairs(records, "same_position")
    assert sides(pairs) == [("b?", "y?", 2, 2)]
    assert pairs[0]["impression_id"] == "i1" and pairs[0]["rejected_impression_id"] == "i2"


def test_identical_texts_and_unknown_filters():
    assert build_pairs([imp("i1", [0, 1, 0], ("a?", "a?", "c?"))]) == []
    with pytest.raises(ValueError, match="skip_above"):
        build_pairs([imp("i1", [0, 1, 0])], "above")


def test_splits_by_week_and_validation_panels_are_disjoint():
    records = [imp(f"w{w}-{i}", [0, 0, 1], week=w, panel=f"w{w}-p{i % 7}") for w in (1, 2, 3, 4) for i in range(20)]
    ood = [imp(f"o-{i}", [0, 1, 0], week=4, panel=f"o{i}", policy="rl") for i in range(5)]
    splits = pair_splits(records, PairConfig(val_fraction=0.3, seed=1), ood)
    assert {p["week"] for p in splits["train"] + splits["val"]} == {1, 2, 3}
    assert {p["week"] for p in splits["iid"]} == {4}
    assert len(splits["train"]) + len(splits["val"]) == 3 * 20 * 2 and len(splits["iid"]) == 20 * 2
    assert not {p["group"] for p in splits["train"]} & {p["group"] for p in splits["val"]}
    assert len({p["group"] for p in splits["val"]}) == round(21 * 0.3)
    assert len(splits["ood"]) == 5 and {p["policy"] for p in splits["ood"]} == {"rl"}
    assert "ood" not in pair_splits(records, PairConfig())
    assert pair_splits(records, PairConfig(ood_weeks=[1]), ood)["ood"] == []


def test_split_by_group_is_seeded_and_keeps_one_group_each_side():
    pairs = [{"group": g} for g in "aabbc"]
    assert split_by_group(pairs, 0.4, 3) == split_by_group(pairs, 0.4, 3)
    rest, held = split_by_group(pairs[:2] + pairs[2:3], 0.01, 0)
    assert rest and held
    assert split_by_group(pairs, 0.0, 0) == (pairs, [])


def test_group_pairs_keeps_a_panels_pairs_together():
    pairs = build_pairs([imp(f"i{i}", [0, 0, 1], panel=f"p{i % 2}") for i in range(4)])
    groups = group_pairs(pairs)
    assert [len(g) for g in groups] == [4, 4] and all(len({p["group"] for p in g}) == 1 for g in groups)


def test_pairs_from_real_click_logs(smoke_collect):
    from clicks2pref.data.io import load_impressions

    _, result = smoke_collect
    records = load_impressions(result["logs"])
    by_id = {r["impression_id"]: r for r in records}
    everything, above = build_pairs(records, "none"), build_pairs(records)
    assert everything, "the smoke logs should hold at least one click"
    assert {p["impression_id"] for p in above} <= {p["impression_id"] for p in everything}
    for p in everything:
        rec = by_id[p["impression_id"]]
        assert rec["clicks"][p["chosen_pos"] - 1] == 1 and rec["clicks"][p["rejected_pos"] - 1] == 0
        assert rec["suggestions"][p["chosen_pos"] - 1] == p["chosen"]
        assert rec["suggestions"][p["rejected_pos"] - 1] == p["rejected"]
    assert all(p["rejected_pos"] < p["chosen_pos"] for p in above)
    assert len(above) == sum(p["rejected_pos"] < p["chosen_pos"] for p in everything)
