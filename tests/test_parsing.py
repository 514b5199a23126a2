"""The one suggestion parser: lenient for serving, strict for the format check."""
from clicks2pref.data.parsing import format_suggestions, parse_suggestions


def test_well_formed_panel():
    p = parse_suggestions("1. How long?\n2. How much?\n3. Is it safe?")
    assert p.suggestions == ["How long?", "How much?", "Is it safe?"] and p.well_formed


def test_lenient_extraction_strict_format():
    p = parse_suggestions("Sure! Here are some:\n- How long?\n* How much?\n3) Is it safe?\n4. And more?")
    assert p.suggestions == ["How long?", "How much?", "Is it safe?"]
    assert not p.well_formed
    assert not parse_suggestions("1. How long?\n2. How much?").well_formed          # too few
    assert not parse_suggestions("1. A?\n3. B?\n2. C?").well_formed                 # out of order
    assert not parse_suggestions("1. 2. 3.").well_formed                              # the reward-hacking panel
    assert parse_suggestions("1. 2. 3.").suggestions == ["2. 3."]
    assert parse_suggestions("no list at all").suggestions == []


def test_round_trip():
    s = ["Can I freeze basil?", "How long does it last?", "Should I wash it first?"]
    assert parse_suggestions(format_suggestions(s)) == parse_suggestions("1. " + s[0] + "\n\n2. " + s[1] + "\n3. " + s[2])
    assert parse_suggestions(format_suggestions(s)).suggestions == s
