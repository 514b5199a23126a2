"""GaRM: a reward model that predicts N(μ, σ²) per item (SPEC 5.3).

P(c ≻ r) = Φ((μ_c − μ_r)/√(σ_c² + σ_r²)) is the probability that a draw from the chosen item's reward
beats a draw from the rejected one. The likelihood alone lets σ grow without bound on contradictory
pairs (a large σ makes every pair a coin flip, which is the best the model can do there), so the loss
adds λ·R(μ, σ); λ is `reward_model.variance_reg.lambda` and the lambda_sweep experiment varies it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def sigma_from_raw(raw: Tensor, sigma_min: float) -> Tensor:
    """σ = softplus(raw) + σ_min: positive, smooth, and bounded away from 0 so z stays finite."""
    return F.softplus(raw) + sigma_min


def garm_z(mu_c: Tensor, sigma_c: Tensor, mu_r: Tensor, sigma_r: Tensor) -> Tensor:
    """Standardised margin z = (μ_c − μ_r)/√(σ_c² + σ_r²); P(c ≻ r) = Φ(z)."""
    return (mu_c - mu_r) / torch.sqrt(sigma_c**2 + sigma_r**2)


def garm_probability(mu_c: Tensor, sigma_c: Tensor, mu_r: Tensor, sigma_r: Tensor) -> Tensor:
    """P(c ≻ r) = Φ(z) for independent Gaussian rewards."""
    return torch.special.ndtr(garm_z(mu_c, sigma_c, mu_r, sigma_r))


def probit_nll(
    mu_c: Tensor, sigma_c: Tensor, mu_r: Tensor, sigma_r: Tensor, z_clamp: float | None = None
) -> Tensor:
    """−log Φ(z) averaged over pairs, via log_ndtr (finite even for z ≪ 0, where Φ(z) underflows).

    `z_clamp` clips z to [−z_clamp, z_clamp]: a pair beyond it contributes a constant loss and no gradient,
    which caps the pull of badly mislabelled pairs.
    """
    z = garm_z(mu_c, sigma_c, mu_r, sigma_r)
    if z_clamp is not None:
        z = z.clamp(-z_clamp, z_clamp)
    return -torch.special.log_ndtr(z).mean()


def mc_logistic_nll(
    mu_c: Tensor,
    sigma_c: Tensor,
    mu_r: Tensor,
    sigma_r: Tensor,
    num_samples: int = 16,
    generator: torch.Generator | None = None,
    eps: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """PURM-style likelihood: Monte-Carlo estimate of −E[log σ(r_c − r_r)], r = μ + σ·ε, ε ~ N(0, 1).

    Reparameterised, so gradients reach μ and σ. `eps=(eps_c, eps_r)`, each of shape
    (num_samples, *mu.shape), fixes the draws (tests, variance-matched comparisons); otherwise they are
    drawn from `generator`. Averaged over samples and pairs.
    """
    if eps is None:
        shape = (num_samples, *mu_c.shape)
        draw = dict(generator=generator, dtype=mu_c.dtype, device=mu_c.device)
        eps = (torch.randn(shape, **draw), torch.randn(shape, **draw))
    eps_c, eps_r = eps
    r_c = mu_c + sigma_c * eps_c
    r_r = mu_r + sigma_r * eps_r
    return -F.logsigmoid(r_c - r_r).mean()


def kl_prior(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) elementwise: pulls σ towards 1 and μ towards 0 (the default regulariser)."""
    return 0.5 * (sigma**2 + mu**2 - 1) - torch.log(sigma)


def sigma_l2(sigma: Tensor) -> Tensor:
    """σ² elementwise: penalises large σ only."""
    return sigma**2


def log_sigma_sq(sigma: Tensor) -> Tensor:
    """(log σ²)² elementwise: pulls σ towards 1 from both sides, symmetric in log scale."""
    return torch.log(sigma**2) ** 2


LIKELIHOODS = {"probit": probit_nll, "mc_logistic": mc_logistic_nll}
REGULARIZERS = {
    "kl_prior": kl_prior,
    "sigma_l2": lambda mu, sigma: sigma_l2(sigma),
    "log_sigma_sq": lambda mu, sigma: log_sigma_sq(sigma),
    "none": lambda mu, sigma: torch.zeros_like(sigma),
}


def _pick(kind: str, name: str, table: dict):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; accepted: {', '.join(table)}")
    return table[name]


def regularization(mu: Tensor, sigma: Tensor, regularizer: str = "kl_prior") -> Tensor:
    """R(μ, σ) averaged over every item given: the term λ weighs in both GaRM objectives (pairs, clicks)."""
    return _pick("regularizer", regularizer, REGULARIZERS)(mu, sigma).mean()


def garm_loss(
    mu_c: Tensor,
    sigma_c: Tensor,
    mu_r: Tensor,
    sigma_r: Tensor,
    *,
    lam: float,
    likelihood: str = "probit",
    regularizer: str = "kl_prior",
    **likelihood_kwargs,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss = NLL + λ·R, R averaged over every item of the batch (chosen and rejected sides together).

    Returns the loss and detached parts for logging: `nll`, `reg`.
    """
    nll = _pick("likelihood", likelihood, LIKELIHOODS)(mu_c, sigma_c, mu_r, sigma_r, **likelihood_kwargs)
    mu, sigma = torch.cat([mu_c.flatten(), mu_r.flatten()]), torch.cat([sigma_c.flatten(), sigma_r.flatten()])
    reg = regularization(mu, sigma, regularizer)
    return nll + lam * reg, {"nll": nll.detach(), "reg": reg.detach()}
