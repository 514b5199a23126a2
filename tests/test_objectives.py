"""Bradley-Terry and Gaussian (GaRM) objectives against hand-computed values (SPEC 5.3)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clicks2pref.objectives.bradley_terry import bt_loss, bt_probability
from clicks2pref.objectives.gaussian import (
    garm_loss,
    garm_probability,
    kl_prior,
    log_sigma_sq,
    mc_logistic_nll,
    probit_nll,
    sigma_from_raw,
    sigma_l2,
)

D = torch.float64


def t(*xs):
    return torch.tensor(xs, dtype=D)


def Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def log_sigmoid(x):
    return -math.log(1 + math.exp(-x))


# Two pairs used throughout: (μ_c, σ_c, μ_r, σ_r)
MU_C, SIG_C, MU_R, SIG_R = t(1.0, -0.5), t(0.5, 1.0), t(0.0, 0.5), t(1.0, 0.5)
Z1 = (1.0 - 0.0) / math.sqrt(0.25 + 1.0)
Z2 = (-0.5 - 0.5) / math.sqrt(1.0 + 0.25)


def test_bt_loss_by_hand():
    rc, rr, margin = t(1.0, 0.2), t(0.5, 0.7), t(0.1, 0.0)
    assert bt_loss(rc, rr).item() == pytest.approx(-(log_sigmoid(0.5) + log_sigmoid(-0.5)) / 2, abs=1e-12)
    expected = -(log_sigmoid(0.4) + log_sigmoid(-0.5)) / 2 + 0.01 * (1.5**2 + 0.9**2) / 2
    assert bt_loss(rc, rr, margin, 0.01).item() == pytest.approx(expected, abs=1e-12)
    expected = [1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))]
    assert bt_probability(rc, rr).tolist() == pytest.approx(expected, abs=1e-12)


def test_bt_loss_matches_trl_reward_trainer():
    trl_reward = pytest.importorskip("trl.trainer.reward_trainer", reason="trl not installed")
    from collections import defaultdict

    rc, rr, margin = torch.randn(5, dtype=D), torch.randn(5, dtype=D), torch.rand(5, dtype=D)
    trainer = object.__new__(trl_reward.RewardTrainer)
    trainer.model = SimpleNamespace(training=False)
    trainer.args = SimpleNamespace(center_rewards_coefficient=0.01)
    trainer.accelerator = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer._metrics, trainer._total_train_tokens = {"eval": defaultdict(list)}, 0
    model = lambda **kw: SimpleNamespace(logits=torch.cat([rc, rr]).unsqueeze(-1))  # noqa: E731
    theirs = trainer.compute_loss(model, {"margin": margin, "attention_mask": torch.ones(10, 3)})
    assert bt_loss(rc, rr, margin, 0.01).item() == pytest.approx(theirs.item(), abs=1e-12)


def test_garm_probability_is_phi_of_standardised_margin():
    assert garm_probability(MU_C, SIG_C, MU_R, SIG_R).tolist() == pytest.approx([Phi(Z1), Phi(Z2)], abs=1e-12)


def test_probit_nll_by_hand_and_clamped():
    expected = -(math.log(Phi(Z1)) + math.log(Phi(Z2))) / 2
    assert probit_nll(MU_C, SIG_C, MU_R, SIG_R).item() == pytest.approx(expected, abs=1e-12)
    clamped = -(math.log(Phi(0.5)) + math.log(Phi(-0.5))) / 2  # |z1|, |z2| ≈ 0.894 > 0.5
    assert probit_nll(MU_C, SIG_C, MU_R, SIG_R, z_clamp=0.5).item() == pytest.approx(clamped, abs=1e-12)


def test_probit_nll_is_finite_far_in_the_tail():
    mu_c = torch.tensor([-40.0], requires_grad=True)
    loss = probit_nll(mu_c, torch.ones(1), torch.zeros(1), torch.zeros(1) + 1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mu_c.grad)
    assert loss.item() == pytest.approx(40.0**2 / 2 + math.log(40.0 * math.sqrt(2 * math.pi)), rel=1e-3)


def test_mc_logistic_nll_with_fixed_eps_by_hand():
    eps_c, eps_r = t(0.3, -1.0, 1.2, 0.0).view(2, 2), t(-0.7, 0.4, 0.1, 2.0).view(2, 2)
    total = 0.0
    for s in range(2):
        for i in range(2):
            r_c = MU_C[i].item() + SIG_C[i].item() * eps_c[s, i].item()
            r_r = MU_R[i].item() + SIG_R[i].item() * eps_r[s, i].item()
            total += -log_sigmoid(r_c - r_r)
    loss = mc_logistic_nll(MU_C, SIG_C, MU_R, SIG_R, eps=(eps_c, eps_r))
    assert loss.item() == pytest.approx(total / 4, abs=1e-12)


def test_mc_logistic_nll_is_seeded_and_estimates_the_expectation():
    draw = lambda seed, n: mc_logistic_nll(  # noqa: E731
        MU_C, SIG_C, MU_R, SIG_R, num_samples=n, generator=torch.Generator().manual_seed(seed))
    assert draw(7, 8).item() == draw(7, 8).item() != draw(8, 8).item()
    # Δ ~ N(μ_c − μ_r, σ_c² + σ_r²): E[−log σ(Δ)] by Gauss-Hermite quadrature
    x, w = np.polynomial.hermite_e.hermegauss(80)
    exact = np.mean([np.sum(w * np.logaddexp(0, -(m + s * x))) / np.sqrt(2 * np.pi)
                     for m, s in [(1.0, math.sqrt(1.25)), (-1.0, math.sqrt(1.25))]])
    assert draw(0, 200_000).item() == pytest.approx(exact, abs=5e-3)


def test_regularisers_by_hand():
    mu, sigma = t(0.5, -1.0), t(2.0, 0.5)
    assert kl_prior(mu, sigma).tolist() == pytest.approx(
        [0.5 * (4 + 0.25 - 1) - math.log(2.0), 0.5 * (0.25 + 1 - 1) - math.log(0.5)], abs=1e-12)
    assert sigma_l2(sigma).tolist() == pytest.approx([4.0, 0.25])
    assert log_sigma_sq(sigma).tolist() == pytest.approx([math.log(4.0) ** 2, math.log(0.25) ** 2], abs=1e-12)
    assert sigma_from_raw(t(0.0, 2.0), 0.01).tolist() == pytest.approx(
        [math.log(2) + 0.01, math.log(1 + math.exp(2)) + 0.01], abs=1e-12)


@pytest.mark.parametrize("regularizer", ["kl_prior", "sigma_l2", "log_sigma_sq", "none"])
def test_garm_loss_is_nll_plus_lambda_times_mean_regulariser(regularizer):
    items = [(1.0, 0.5), (-0.5, 1.0), (0.0, 1.0), (0.5, 0.5)]  # both sides of both pairs
    per_item = {
        "kl_prior": lambda m, s: 0.5 * (s * s + m * m - 1) - math.log(s),
        "sigma_l2": lambda m, s: s * s,
        "log_sigma_sq": lambda m, s: math.log(s * s) ** 2,
        "none": lambda m, s: 0.0,
    }[regularizer]
    reg = sum(per_item(m, s) for m, s in items) / 4
    nll = -(math.log(Phi(Z1)) + math.log(Phi(Z2))) / 2
    loss, parts = garm_loss(MU_C, SIG_C, MU_R, SIG_R, lam=0.3, regularizer=regularizer)
    assert loss.item() == pytest.approx(nll + 0.3 * reg, abs=1e-12)
    assert parts["nll"].item() == pytest.approx(nll, abs=1e-12)
    assert parts["reg"].item() == pytest.approx(reg, abs=1e-12)


def test_garm_loss_passes_likelihood_options_through():
    eps = (torch.zeros(3, 2, dtype=D), torch.zeros(3, 2, dtype=D))  # ε = 0: logistic on μ_c − μ_r
    loss, _ = garm_loss(MU_C, SIG_C, MU_R, SIG_R, lam=0.0, likelihood="mc_logistic", eps=eps)
    assert loss.item() == pytest.approx(-(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2, abs=1e-12)


@pytest.mark.parametrize("kw, names", [({"likelihood": "logit"}, "probit, mc_logistic"),
                                       ({"regularizer": "l2"}, "kl_prior, sigma_l2, log_sigma_sq, none")])
def test_garm_loss_rejects_unknown_names_listing_the_accepted_ones(kw, names):
    with pytest.raises(ValueError, match=names):
        garm_loss(MU_C, SIG_C, MU_R, SIG_R, lam=0.1, **kw)


def _fit_sigma(lam, regularizer, steps=300):
    # a≻b and b≻a, repeated, are the contradiction. The chain a≻c≻b keeps μ_a above μ_b, as shared features
    # would in a network; with free μ and contradictory pairs alone, μ_a = μ_b resolves the conflict and σ
    # only reaches ≈ 1.6. d≻c is an ordinary consistent pair.
    a, b, c, d = 0, 1, 2, 3
    pairs = [(a, b), (b, a)] * 2 + [(a, c), (c, b), (d, c)]
    chosen, rejected = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    mu, raw = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([mu, raw], lr=0.1)
    for _ in range(steps):
        sigma = sigma_from_raw(raw, 1e-3)
        loss, _ = garm_loss(mu[chosen], sigma[chosen], mu[rejected], sigma[rejected], lam=lam,
                            regularizer=regularizer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sigma_from_raw(raw, 1e-3).detach()


def test_without_variance_regularisation_sigma_runs_away_on_contradictory_pairs():
    sigma = _fit_sigma(lam=0.0, regularizer="none")
    assert sigma[1] > 5.0  # the contested item's σ explodes (≈ 9.7 at 300 steps, still rising)...
    assert sigma[[0, 2]].max() < 0.05  # ...while its neighbours collapse onto σ_min


def test_kl_prior_keeps_sigma_bounded_on_contradictory_pairs():
    sigma = _fit_sigma(lam=0.1, regularizer="kl_prior")
    assert sigma.max() < 3.0 and sigma.min() > 0.1
