"""The option names the losses accept, as the config checks them, and the registry of reward-model objectives.

Each table's functions live in the loss's own module (`objectives.gaussian.LIKELIHOODS`, `objectives.dpo.LOSS_TYPES`,
...); tests/test_structure.py asserts the names here match those tables. `OBJECTIVES` (`reward_model.objective`)
names the module `clicks2pref.objectives.<name>` that holds each objective's `batch_loss`, and what its batches
hold; `clicks2pref.objectives` reads it from here.
"""
from __future__ import annotations

CLICK_MODELS = ("cascade", "pbm")  # objectives.click_model.click_nll
LIKELIHOODS = ("probit", "mc_logistic")  # objectives.gaussian.LIKELIHOODS (GaRM's pairwise NLL)
REGULARIZERS = ("kl_prior", "sigma_l2", "log_sigma_sq", "none")  # objectives.gaussian.REGULARIZERS (R in λ·R)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm")  # objectives.dpo.LOSS_TYPES
DPO_LABEL_SMOOTHED = ("sigmoid", "robust")  # objectives.dpo.LABEL_SMOOTHED
GRPO_LOSS_TYPES = ("token", "bnpo", "dapo", "sequence", "grpo", "dr_grpo")  # objectives.grpo.LOSS_TYPES
GRPO_SCALE_REWARDS = ("group", "batch", "none", True, False)  # objectives.grpo.SCALE_REWARDS

OBJECTIVES = {  # reward_model.objective → what its batches hold
    "click_model": {"reads": "impressions"},  # every impression under a cascade with learned examination
    "pairwise": {"reads": "pairs"},  # clicked ≻ skipped pairs (the paper's GaRM / BTRM losses)
}
READS = ("pairs", "impressions")
