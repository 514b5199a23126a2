"""DPO losses: hand-computed values, parity with the installed TRL's DPOTrainer, and the direction of a step."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from clicks2pref.objectives.dpo import LOSS_TYPES, dpo_loss, dpo_stats, sequence_logps

# ---------------------------------------------------------------- by hand: 2 pairs, β = 0.5

BETA = 0.5
POLICY_C, REF_C = [-5.0, -8.0], [-6.0, -7.0]  # chosen log-ratios: +1, −1
POLICY_R, REF_R = [-7.0, -6.0], [-6.0, -6.5]  # rejected log-ratios: −1, +0.5
LEN_C, LEN_R = [2.0, 4.0], [4.0, 1.0]
# Margins Δ = 2 and −1.5, so β·Δ = 1 and −0.75. Per-token mean margins Δ̄ = 1/2 + 1/4 = 0.75 and
# −1/4 − 0.5/1 = −0.75, so β·Δ̄ = ±0.375; IPO's target 1/(2β) = 1.


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


EPS = 0.1
BY_HAND = {
    ("sigmoid", 0.0): [-_log_sigmoid(1.0), -_log_sigmoid(-0.75)],
    ("sigmoid", EPS): [-(1 - EPS) * _log_sigmoid(x) - EPS * _log_sigmoid(-x) for x in (1.0, -0.75)],
    ("hinge", 0.0): [0.0, 1.75],  # the first pair is past the margin 1/β
    ("ipo", 0.0): [(0.75 - 1) ** 2, (-0.75 - 1) ** 2],
    ("robust", EPS): [(-(1 - EPS) * _log_sigmoid(x) + EPS * _log_sigmoid(-x)) / (1 - 2 * EPS) for x in (1.0, -0.75)],
    ("robust", 0.0): [-_log_sigmoid(1.0), -_log_sigmoid(-0.75)],
    ("sigmoid_norm", 0.0): [-_log_sigmoid(0.375), -_log_sigmoid(-0.375)],
}


def _ours(loss_type, label_smoothing=0.0, **kw):
    T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return dpo_loss(T(POLICY_C), T(POLICY_R), T(REF_C), T(REF_R), beta=BETA, loss_type=loss_type,
                    label_smoothing=label_smoothing, chosen_lengths=T(LEN_C), rejected_lengths=T(LEN_R), **kw)


@pytest.mark.parametrize("loss_type, label_smoothing", list(BY_HAND))
def test_dpo_loss_by_hand(loss_type, label_smoothing):
    losses, chosen_rewards, rejected_rewards = _ours(loss_type, label_smoothing)
    assert losses.tolist() == pytest.approx(BY_HAND[loss_type, label_smoothing], abs=1e-12)
    # rewards are β·(summed log-ratio) whatever the loss, length-normalised ones included
    assert chosen_rewards.tolist() == pytest.approx([0.5, -0.5], abs=1e-12)
    assert rejected_rewards.tolist() == pytest.approx([-0.5, 0.25], abs=1e-12)


def test_every_loss_type_is_covered_by_hand():
    assert {name for name, _ in BY_HAND} == set(LOSS_TYPES)


def test_dpo_stats_by_hand():
    _, chosen, rejected = _ours("sigmoid")
    stats = dpo_stats(chosen, rejected)
    assert stats["rewards/chosen"].item() == pytest.approx(0.0, abs=1e-12)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.125, abs=1e-12)
    assert stats["rewards/accuracies"].item() == pytest.approx(0.5)
    assert stats["rewards/margins"].item() == pytest.approx(0.125, abs=1e-12)


def test_sequence_logps_by_hand():
    per_token = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    summed, lengths = sequence_logps(per_token, mask)
    assert summed.tolist() == [-3.0, -3.5]  # padding that holds −inf or NaN is dropped
    assert lengths.tolist() == [2.0, 2.0]
    assert (summed / lengths).tolist() == [-1.5, -1.75]  # the per-token mean


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo"):
        _ours("kto")
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        _ours("robust", 0.5)
    with pytest.raises(ValueError, match="does not use label_smoothing"):
        _ours("ipo", 0.1)
    T = lambda x: torch.tensor(x)  # noqa: E731
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(T(POLICY_C), T(POLICY_R), T(REF_C), T(REF_R), beta=BETA, loss_type="ipo")


# ---------------------------------------------------------------- the direction of one step


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("sigmoid", EPS), ("hinge", 0.0),
                                                        ("ipo", 0.0), ("robust", EPS), ("sigmoid_norm", 0.0)])
def test_one_step_raises_chosen_and_lowers_rejected(loss_type, label_smoothing):
    """A unigram policy over 6 tokens, starting at its reference: one small step down the gradient of the DPO
    loss makes the chosen completions more likely and the rejected ones less likely (they use different tokens).
    The step has a fixed length, since the losses' gradients differ in scale (IPO's target 1/(2β) is far)."""
    logits = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    chosen = torch.tensor([[0, 1, 0], [1, 1, 0]])
    rejected = torch.tensor([[2, 3, 4], [3, 5, 0]])
    mask_c = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask_r = torch.tensor([[1, 1, 1], [1, 1, 0]])

    def seq(ids, mask):
        return sequence_logps(torch.log_softmax(logits, -1)[ids], mask)

    (pc, len_c), (pr, len_r) = seq(chosen, mask_c), seq(rejected, mask_r)
    losses, _, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1, loss_type=loss_type,
                            label_smoothing=label_smoothing, chosen_lengths=len_c, rejected_lengths=len_r)
    losses.mean().backward()
    with torch.no_grad():
        logits -= 0.05 * logits.grad / logits.grad.norm()
        (pc_after, _), (pr_after, _) = seq(chosen, mask_c), seq(rejected, mask_r)
    assert (pc_after > pc.detach()).all()
    assert (pr_after < pr.detach()).all()


# ---------------------------------------------------------------- parity with TRL's own code


@pytest.fixture(scope="module")
def trl_dpo():
    module = pytest.importorskip("trl.trainer.dpo_trainer", reason="trl not installed: DPO parity needs it")
    if not hasattr(module.DPOTrainer, "_compute_loss"):
        pytest.skip("DPO parity is written against TRL 1.x's DPOTrainer._compute_loss")
    return module


def _trl_loss(trl_dpo, per_token, ref_chosen, ref_rejected, mask, *, beta, loss_type, label_smoothing=0.0):
    """Runs TRL's real `DPOTrainer._compute_loss` on a bare instance. TRL 1.16 has no separate DPO loss
    function: the loss is computed inline after the model forward. So the forward is stubbed: it returns
    `per_token` (chosen rows then rejected rows) as the fused LM head does, zero where the label is −100;
    reference log-probs come precomputed in the batch; accelerate's gathers are the identity (one process);
    LD-DPO, f-divergences, WPO weighting and MoE aux loss are off. Each completion follows a one-token prompt."""
    trainer = object.__new__(trl_dpo.DPOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(device=per_token.device, gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.precompute_ref_logps, trainer.ld_alpha, trainer.f_divergence_type = True, None, "reverse_kl"
    trainer.use_weighting, trainer.aux_loss_enabled = False, False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1

    def model(*, labels, fused_lm_head, **_):
        assert fused_lm_head
        valid = labels[:, 1:] != -100
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token.masked_fill(~valid, 0.0), entropy=zeros, mean_logits=zeros,
                               is_top1=torch.zeros_like(valid))

    completion_mask = torch.cat([torch.zeros(mask.shape[0], 1, dtype=torch.long), mask], dim=1)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


def _batch(seed, B=6, T=7):
    """Per-token log-probs for B chosen and B rejected completions (chosen rows first), right-padded masks of
    different lengths, garbage in the padding, and reference sums near the policy's so that margins vary in sign."""
    g = torch.Generator().manual_seed(seed)
    per_token = -torch.rand(2 * B, T, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, T + 1, (2 * B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).long()
    per_token = per_token.masked_fill(mask == 0, -7.5)
    summed = (per_token * mask).sum(-1)
    ref = summed + 1.5 * torch.randn(2 * B, generator=g, dtype=torch.float64)
    return per_token, ref[:B], ref[B:], mask


def _ours_from_tokens(per_token, ref_chosen, ref_rejected, mask, **kw):
    logps, lengths = sequence_logps(per_token, mask)
    (pc, pr), (lc, lr) = logps.chunk(2), lengths.chunk(2)
    losses, chosen, rejected = dpo_loss(pc, pr, ref_chosen, ref_rejected, chosen_lengths=lc, rejected_lengths=lr,
                                        **kw)
    return losses.mean(), dpo_stats(chosen, rejected)


PARITY = [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.0), ("robust", EPS), ("sigmoid_norm", 0.0)]


@pytest.mark.parametrize("loss_type, label_smoothing", PARITY)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_matches_trl_compute_loss(trl_dpo, loss_type, label_smoothing, beta):
    per_token, ref_c, ref_r, mask = _batch(0)
    setting = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    mine = per_token.clone().requires_grad_()
    ours, stats = _ours_from_tokens(mine, ref_c, ref_r, mask, **setting)
    theirs_tokens = per_token.clone().requires_grad_()
    theirs, metrics = _trl_loss(trl_dpo, theirs_tokens, ref_c, ref_r, mask, **setting)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(mine.grad, theirs_tokens.grad, atol=1e-10, rtol=0)
    assert 0 < metrics["rewards/accuracies"] < 1  # the example has pairs on both sides of the margin
    for name in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"]:
        assert stats[name].item() == pytest.approx(metrics[name], abs=1e-10), name
    logps, _ = sequence_logps(per_token, mask)
    assert metrics["logps/chosen"] == pytest.approx(logps[:6].mean().item(), abs=1e-10)


def test_conservative_dpo_matches_trl(trl_dpo):
    """TRL 1.16's `sigmoid` no longer reads label_smoothing, but its `aot_unpaired` applies the same smoothed
    loss to the margin of the sorted chosen and sorted rejected log-ratios. On a batch whose log-ratios are
    already in ascending order on both sides, sorting changes nothing, so it is conservative DPO pair by pair."""
    per_token, ref_c, ref_r, mask = _batch(1)
    logps, _ = sequence_logps(per_token, mask)
    B = ref_c.numel()
    ramp = torch.arange(B, dtype=torch.float64)
    ref_c = logps[:B] - (ramp - 2.0)  # chosen log-ratios −2, −1, 0, …
    ref_r = logps[B:] - (0.5 * ramp - 1.2)  # rejected log-ratios rise more slowly: margins of both signs
    setting = dict(beta=0.5, label_smoothing=EPS)
    ours, _ = _ours_from_tokens(per_token, ref_c, ref_r, mask, loss_type="sigmoid", **setting)
    theirs, _ = _trl_loss(trl_dpo, per_token, ref_c, ref_r, mask, loss_type="aot_unpaired", **setting)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    plain, _ = _trl_loss(trl_dpo, per_token, ref_c, ref_r, mask, loss_type="sigmoid", **setting)
    assert abs(ours.item() - plain.item()) > 1e-3  # and TRL 1.16's sigmoid does ignore it
