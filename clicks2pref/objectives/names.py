"""The option names the losses accept, as the config checks them: torch-free, so that checking a config loads
no torch. Each table's functions live in its own module (`gaussian.LIKELIHOODS`, `dpo.LOSS_TYPES`, ...), and
tests/test_structure.py asserts the names here match those tables."""
from __future__ import annotations

CLICK_MODELS = ("cascade", "pbm")  # objectives.click_model.click_nll
LIKELIHOODS = ("probit", "mc_logistic")  # objectives.gaussian.LIKELIHOODS (GaRM's pairwise NLL)
REGULARIZERS = ("kl_prior", "sigma_l2", "log_sigma_sq", "none")  # objectives.gaussian.REGULARIZERS (R in λ·R)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm")  # objectives.dpo.LOSS_TYPES
DPO_LABEL_SMOOTHED = ("sigmoid", "robust")  # objectives.dpo.LABEL_SMOOTHED
GRPO_LOSS_TYPES = ("token", "bnpo", "dapo", "sequence", "grpo", "dr_grpo")  # objectives.grpo.LOSS_TYPES
GRPO_SCALE_REWARDS = ("group", "batch", "none", True, False)  # objectives.grpo.SCALE_REWARDS
