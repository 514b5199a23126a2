"""Single-suggestion SFT data, chat formatting and the target-only loss mask."""
from __future__ import annotations

import pytest
import torch

from clicks2pref.config.sft import SFTDataConfig
from clicks2pref.data.sft_data import click_groups, group_key, normalize, single_suggestion_examples, split_groups
from clicks2pref.objectives.sft import IGNORE_INDEX, masked_lm_loss, mean_masked_lm_loss

CTX_A = [{"role": "user", "content": "How do I store basil?"}, {"role": "assistant", "content": "In water."}]
CTX_A2 = [{"role": "user", "content": "Best way to keep basil fresh?"}, {"role": "assistant", "content": "In water."}]
CTX_B = [{"role": "user", "content": "How do I boil eggs?"}, {"role": "assistant", "content": "Ten minutes."}]


def rec(i, week, ctx, suggestions, clicks, topic="basil", facet="store"):
    r = {"impression_id": f"w{week}-{i}", "week": week, "policy": "p", "context": ctx, "suggestions": suggestions,
         "clicks": clicks}
    if topic:
        r.update(topic=topic, facet=facet)
    return r


RECORDS = [
    rec(0, 1, CTX_A, ["Can I freeze basil?", "How long does basil last?", "Is basil toxic to cats?"], [0, 1, 0]),
    rec(1, 1, CTX_A, ["Can I freeze basil?", "How long does basil last?", "Is basil toxic to cats?"], [1, 0, 0]),
    rec(2, 2, CTX_A2, ["can i freeze basil", "How do I dry basil?", "Why is my basil black?"], [1, 0, 0]),
    rec(3, 3, CTX_A, ["How do I dry basil?", "Can I grow basil indoors?", "Is basil a herb?"], [0, 0, 1]),
    rec(4, 4, CTX_B, ["How long to boil eggs?", "Why do eggs crack?", "Can I boil old eggs?"], [0, 0, 0],
        topic="eggs", facet="boil"),
]


def test_groups_collect_clicked_suggestions_best_first():
    groups = click_groups(RECORDS, SFTDataConfig())
    basil = next(g for g in groups if g["group"] == "basil/store")
    texts = [c["text"] for c in basil["candidates"]]
    # "Can I freeze basil?" clicked twice (two spellings merged by dedup), the others once
    assert texts[0] == "Can I freeze basil?" and basil["candidates"][0]["clicks"] == 2
    assert set(texts) == {"Can I freeze basil?", "How long does basil last?", "Is basil a herb?"}
    assert basil["context"] == CTX_A  # the most frequent conversation of the group
    eggs = next(g for g in groups if g["group"] == "eggs/boil")
    assert eggs["candidates"] == [] and eggs["impressions"] == 1


def test_min_clicks_weeks_and_dedup_are_configurable():
    only_twice = click_groups(RECORDS, SFTDataConfig(min_clicks=2))
    assert [c["text"] for g in only_twice for c in g["candidates"]] == ["Can I freeze basil?"]
    week1 = click_groups(RECORDS, SFTDataConfig(last_week=1))
    assert {c["text"] for g in week1 for c in g["candidates"]} == {"Can I freeze basil?", "How long does basil last?"}
    no_dedup = click_groups(RECORDS, SFTDataConfig(dedup=False))
    assert {"Can I freeze basil?", "can i freeze basil"} <= {c["text"] for g in no_dedup for c in g["candidates"]}
    assert normalize("  Can I  freeze basil?? ") == "can i freeze basil"


def test_group_key_falls_back_to_the_conversation():
    r = rec(9, 1, CTX_B, ["a b c?"], [1], topic=None)
    assert group_key(r).startswith("ctx-") and group_key(r) == group_key(dict(r, impression_id="other"))
    assert group_key(r) != group_key(rec(9, 1, CTX_A, ["a b c?"], [1], topic=None))


def test_single_examples_and_group_split():
    groups = click_groups(RECORDS, SFTDataConfig())
    single = single_suggestion_examples(groups)
    assert len(single) == 3 and all(e["source"] == "click" and e["context"] == CTX_A for e in single)
    train, val = split_groups(groups, 0.5)
    assert len(train) + len(val) == len(groups) and len(val) >= 1
    assert split_groups(groups, 0.5) == (train, val)  # stable


@pytest.fixture(scope="module")
def tokenizer():
    from clicks2pref.models.registry import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref")


def test_loss_mask_covers_exactly_the_target_tokens(tokenizer):
    from clicks2pref.lit.sft_datamodule import encode_example

    messages = CTX_A + [{"role": "user", "content": "Suggest three follow-up questions."}]
    target = "1. Can I freeze basil?\n2. How long does basil last?\n3. Is basil toxic to cats?"
    ex = encode_example(tokenizer, messages, target, max_length=512)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    n_prompt = len(prompt)
    assert ex["input_ids"][:n_prompt] == list(prompt)
    assert all(label == IGNORE_INDEX for label in ex["labels"][:n_prompt])
    learned = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert learned == ex["input_ids"][n_prompt:]
    assert tokenizer.decode(learned) == target + tokenizer.eos_token  # the reply and its end-of-turn token
    # the same tokens as the chat template renders for the whole conversation (minus its trailing newline)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=True,
                                         return_dict=False)
    assert ex["input_ids"] == list(full)[:len(ex["input_ids"])]
    assert encode_example(tokenizer, messages, target, max_length=n_prompt + 3) is None  # too long: dropped


def test_masked_loss_ignores_prompt_and_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 5, 6],
                           [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    total, n = masked_lm_loss(logits, labels)
    assert n == 5
    expected = sum(torch.nn.functional.cross_entropy(logits[b, t - 1], labels[b, t], reduction="sum")
                   for b in range(2) for t in range(6) if labels[b, t] != IGNORE_INDEX)
    assert torch.allclose(total, expected)
    changed = logits.clone()
    changed[:, :2] += 100.0  # logits at positions that predict masked tokens do not matter
    assert torch.allclose(mean_masked_lm_loss(changed, labels), total / n)


def test_batched_loss_equals_per_example_loss(tokenizer):
    """Left padding, position ids and the kept-logits window give each example its unpadded loss."""
    from clicks2pref.lit.sft_datamodule import collate, encode_example
    from clicks2pref.lit.sft_module import SFTModule
    from clicks2pref.models.registry import ModelConfig, load_causal_lm

    model, tok = load_causal_lm(ModelConfig(name="tiny-llama"), "~/.cache/clicks2pref", seed=0)
    module = SFTModule(model, optimizer=torch.optim.AdamW).eval()
    examples = [encode_example(tok, CTX_A + [{"role": "user", "content": "Suggest."}], "1. Short?", 512),
                encode_example(tok, CTX_B + [{"role": "user", "content": "Suggest three questions please."}],
                               "1. A much longer target question here?\n2. And another one?", 512)]
    with torch.no_grad():
        total, n = module.loss_sum(collate(examples, tok.pad_token_id))
        singles = [module.loss_sum(collate([e], tok.pad_token_id)) for e in examples]
        full = [masked_lm_loss(model(input_ids=torch.tensor([e["input_ids"]])).logits, torch.tensor([e["labels"]]))
                for e in examples]
    assert n == sum(s[1] for s in singles)
    assert torch.allclose(total, sum(s[0] for s in singles), rtol=1e-4)
    assert torch.allclose(total, sum(f[0] for f in full), rtol=1e-4)
