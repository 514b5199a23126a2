"""The compute meter against positions counted by hand with the tokenizer, on tiny-llama: a policy's sampling, its
forward and backward, the reference (LoRA off), a reward model scoring suggestions (shared conversations, a
truncated fallback row, a cache hit) and the perplexity reference; and the backward weight per setting."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.lit.compute import ComputeMeter, backward_weight, bodies, positions
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.logprobs import completion_logps, pad_prompt_completion
from clicks2pref.models.registry import LoraConfig, ModelConfig, load_causal_lm
from clicks2pref.models.reward_heads import HeadConfig, build_reward_model
from clicks2pref.models.shared_prompt import generate_grouped, grouped_completion_logps
from clicks2pref.rewards.base import RewardBatch, RewardResources
from clicks2pref.rewards.composite import CompositeReward
from clicks2pref.rewards.garm import GaRMReward
from clicks2pref.rewards.ppl import PerplexityReward, ReferenceScorer

CACHE = str(Path.home() / ".cache/clicks2pref")
BASIL = [{"role": "user", "content": "How do I store fresh basil?"},
         {"role": "assistant", "content": "Keep the stems in a glass of water at room temperature."}]
DOUGH = [{"role": "user", "content": "Is it safe to eat raw cookie dough?"},
         {"role": "assistant", "content": "Raw flour and eggs can carry bacteria, so it is safer to bake it."}]
LONG = [{"role": "user", "content": "Tell me everything about sourdough starters. " * 20},
        {"role": "assistant", "content": "Feed it flour and water daily and keep it warm."}]
MAX_LENGTH = 128  # the reward model's input limit: LONG's conversation alone exceeds it


@pytest.fixture(scope="module")
def setup():
    """A LoRA policy (its disabled adapters are the reference and the `ppl` scorer, as in stage=grpo), a GaRM
    and the composite reward of both."""
    policy, tok = load_causal_lm(ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)), CACHE, seed=0)
    rm = build_reward_model("garm", ModelConfig(name="tiny-llama"), HeadConfig(init_std=0.5, max_length=MAX_LENGTH),
                            CACHE, seed=0)
    reference = ReferenceScorer(policy, tok, PromptTemplate(), batch_size=2, reference_context=policy.disable_adapter)
    resources = RewardResources({"garm": rm}, reference)
    garm = GaRMReward(kappa=1.0, examination=[0.9, 0.6, 0.4], redundancy=False, batch_size=3)
    ppl = PerplexityReward(tau=1.0)
    for component in (garm, ppl):
        component.setup(resources)
    return policy, tok, rm, CompositeReward({"garm": garm, "ppl": ppl}, {"garm": 1.0, "ppl": 0.5})


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def conversation_and_reply(tok, context: list[dict], suggestion: str) -> tuple[int, int]:
    """Tokens of a conversation in the RM's chat template, and of the suggestion as the assistant's reply after it."""
    turns = [{"role": t["role"], "content": t["content"]} for t in context]
    prefix = tok.apply_chat_template(turns, tokenize=False)
    full = tok.apply_chat_template(turns + [{"role": "assistant", "content": suggestion}], tokenize=False).rstrip()
    return n_tokens(tok, prefix), n_tokens(tok, full[len(prefix):])


def test_every_forward_position_of_every_model_is_counted_once(setup):
    policy, tok, rm, reward = setup
    meter = ComputeMeter()
    meter.watch_policy(policy)
    meter.watch_reward(reward)
    assert len(meter._handles) == 2  # the policy's body (also the ppl reference's) and the GaRM's backbone

    # the prompts and completions of a GRPO batch, and positions counted by hand
    prompts = chat_inputs(tok, [build_messages(PromptTemplate(), c) for c in (BASIL, DOUGH)])
    completions = [tok("1. Why?", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                   tok("1. Can I bake it?\n2. How hot?", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert len(prompts[0]) != len(prompts[1]) and len(completions[0]) != len(completions[1])  # padding to skip
    rows = sum(len(p) + len(c) for p, c in zip(prompts, completions))
    ids, attention, mask = pad_prompt_completion(prompts, completions, tok.pad_token_id)
    group = [prompts[0], prompts[0]]  # one prompt, two completions: the prompt runs once
    gids, gattention, gmask = pad_prompt_completion(group, completions, tok.pad_token_id)
    grouped = len(prompts[0]) + len(completions[0]) + len(completions[1])
    new = 5  # sampling: the prompt's prefill, then one position per row per decoding step
    sampled = (len(prompts[0]) - 1) + 2 * new

    policy(input_ids=ids, attention_mask=attention)  # no step open: not counted
    meter.start_step()
    with meter.sampling(), torch.no_grad():
        prompt = torch.tensor([prompts[0]])
        generate_grouped(policy, prompt, torch.ones_like(prompt), 2, max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    completion_logps(policy, ids, attention, mask.shape[1])[0].sum().backward()  # the loss: forward and backward
    grouped_completion_logps(policy, gids, gattention, gmask.shape[1], 2)[0].sum().backward()
    with torch.no_grad(), policy.disable_adapter():  # the reference
        completion_logps(policy, ids, attention, mask.shape[1])
    step = meter.end_step("grpo")
    policy.zero_grad()
    assert step["grpo/compute/sampling_tokens"] == sampled
    assert step["grpo/compute/forward_tokens"] == 2 * rows + grouped
    assert step["grpo/compute/backward_tokens"] == rows + grouped
    assert step["grpo/compute/reward_tokens"] == 0

    # the reward: GaRM over distinct suggestions (grouped by conversation), the ppl reference over
    # whole completions (no reference log-probs given, as outside GRPO's step)
    texts = ["1. Can I freeze basil?\n2. Why?\n3. How long does basil keep?",  # BASIL
             "1. Why?\n2. What goes with basil?",  # BASIL again: "Why?" is scored once
             "1. Which doughs are safe raw?",  # DOUGH
             "1. How do I revive a starter?"]  # LONG: cut to the RM's limit, scored by the full pass
    contexts = [BASIL, BASIL, DOUGH, LONG]
    basil = ["Can I freeze basil?", "Why?", "How long does basil keep?", "What goes with basil?"]
    p_basil, s_basil = zip(*[conversation_and_reply(tok, BASIL, s) for s in basil])
    p_dough, s_dough = conversation_and_reply(tok, DOUGH, "Which doughs are safe raw?")
    p_long, s_long = conversation_and_reply(tok, LONG, "How do I revive a starter?")
    assert p_long + s_long > MAX_LENGTH
    # each conversation runs once per call (its replies continue from copies of its cache, a chunk of 3 at a time):
    # BASIL's conversation + its 4 replies, DOUGH's + 1; LONG: cut to 128 tokens, scored by the full pass
    rm_positions = p_basil[0] + sum(s_basil) + p_dough + s_dough + MAX_LENGTH
    # the ppl reference: each conversation's prompt once (BASIL's two completions share it), every completion
    ppl_prompts = chat_inputs(tok, [build_messages(PromptTemplate(), c) for c in (BASIL, DOUGH, LONG)])
    ppl_positions = sum(map(len, ppl_prompts)) + sum(n_tokens(tok, t) + 1 for t in texts)  # + the end token

    meter.start_step()
    reward(RewardBatch(contexts, texts))
    step = meter.end_step("grpo")
    assert step["grpo/compute/reward_tokens"] == rm_positions
    assert rm_positions % MAX_LENGTH != 0
    assert step["grpo/compute/forward_tokens"] == ppl_positions  # the reference, as the policy's
    assert step["grpo/compute/backward_tokens"] == 0 and step["grpo/compute/sampling_tokens"] == 0

    meter.start_step()  # the same suggestions again: cached scores run no reward model; the reference log-probs
    reward(RewardBatch(contexts, texts, ref_log_ppl=torch.ones(4)))  # came with the batch (GRPO's path)
    step = meter.end_step("grpo")
    assert step["grpo/compute/reward_tokens"] == 0 and step["grpo/compute/forward_tokens"] == 0

    # totals, and forward-equivalents at the LoRA weight: 1 + the adapters' share of the weights
    share = sum(p.numel() for p in policy.parameters() if p.requires_grad) / sum(p.numel() for p in policy.parameters())
    assert 0 < share < 0.01
    totals = meter.totals()
    assert totals["forward_tokens"] == 2 * rows + grouped + ppl_positions
    assert totals["reward_tokens"] == rm_positions
    assert totals["token_passes"] == pytest.approx(sampled + 2 * rows + grouped + ppl_positions + rm_positions
                                                   + (1 + share) * (rows + grouped))
    meter.close()


def test_the_backward_weight_is_two_for_full_fine_tuning_one_plus_the_adapters_for_lora():
    full, _ = load_causal_lm(ModelConfig(name="tiny-llama"), CACHE, seed=0)
    assert backward_weight(full) == 2.0
    lora, _ = load_causal_lm(ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)), CACHE, seed=0)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trainable == 2 * 4 * 4 * (64 + 64)  # 2 layers × q, k, v, o projections × r·(in + out)
    assert backward_weight(lora) == pytest.approx(1 + trainable / sum(p.numel() for p in lora.parameters()))
    frozen, _ = load_causal_lm(ModelConfig(name="tiny-llama"), CACHE, seed=0)
    frozen.requires_grad_(False)
    assert backward_weight(frozen) == 1.0


@pytest.mark.parametrize("checkpointing, fixed, weight", [(False, None, 2.0), (True, None, 3.0), (False, 1.5, 1.5)])
def test_token_passes_weigh_a_back_propagated_position(checkpointing, fixed, weight):
    model, _ = load_causal_lm(ModelConfig(name="tiny-llama", gradient_checkpointing=checkpointing), CACHE, seed=0)
    meter = ComputeMeter(backward_weight=fixed)
    meter.watch_policy(model)
    meter.start_step()
    model(input_ids=torch.ones(2, 3, dtype=torch.long))  # 6 positions, forward and backward
    with torch.no_grad():
        model(input_ids=torch.ones(1, 4, dtype=torch.long))  # 4, forward only
    assert meter.end_step("grpo")["grpo/compute/token_passes"] == pytest.approx(6 + 4 + weight * 6)


def test_positions_are_a_calls_new_unpadded_tokens(setup):
    ones = torch.ones(2, 3, dtype=torch.long)
    assert positions((), {"input_ids": ones}) == 6  # no mask: rows × tokens
    assert positions((ones,), {}) == 6
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert positions((), {"input_ids": ones, "attention_mask": mask}) == 5  # left padding left out
    past = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])  # a continuation of a 2-position cache
    assert positions((), {"input_ids": ones, "attention_mask": past}) == 5
    assert positions((), {"inputs_embeds": torch.zeros(2, 4, 8)}) == 8
    policy, _, rm, _ = setup
    assert bodies(policy) == [policy.get_base_model().model]  # under PEFT and the LM head
    assert bodies(rm) == [rm.backbone]  # under the head, where its shared-conversation passes enter
