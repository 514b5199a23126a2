"""The reward GRPO trains on, assembled from its config and what earlier stages fitted.

One builder for every stage that scores with that reward (GRPO's training, evaluation's best-of-n by the
composite): the components of `rewards` with the reference policy as the perplexity scorer, GaRM's κ and
the weights from stage fusion when `rewards.weights=fusion`, and τ from fusion or calibrated on the logs.
"""
from __future__ import annotations

import logging
from typing import Optional

from omegaconf import OmegaConf

from clicks2pref.rewards.base import RewardResources
from clicks2pref.rewards.composite import CompositeReward, build_components, resolve_weights
from clicks2pref.rewards.ppl import ReferenceScorer, logged_panels

log = logging.getLogger(__name__)


def build_reward(cfg, reference_model, tok, template, reference_context, rm_folders: dict,
                 fused: Optional[dict], records: list[dict]):
    """The composite reward with τ calibrated (or taken from fusion) and weights resolved."""
    scorer = ReferenceScorer(reference_model, tok, template, cfg.grpo.temperature, cfg.grpo.micro_batch_size,
                             reference_context)
    rewards = cfg.rewards
    if fused is not None and fused.get("kappa") is not None and rewards.weights == "fusion":
        rewards = OmegaConf.merge(rewards, {"garm": {"kappa": fused["kappa"]}})  # κ fitted with the weights
        log.info("grpo: GaRM κ = %g (fitted by stage=fusion)", fused["kappa"])
    components = build_components(rewards, RewardResources(rm_folders, scorer, cfg.paths.model_cache,
                                                           cfg.reward_model.backbone.trust_remote_code))
    tau = None
    if "ppl" in components:
        ppl = components["ppl"]
        if ppl.tau is None and fused is not None and fused.get("tau") is not None:
            ppl.tau = fused["tau"]
        elif ppl.tau is None:
            contexts, panels = logged_panels(records, ppl.calibration_panels, cfg.seed)
            ppl.calibrate(contexts, panels)
        tau = ppl.tau
        log.info("grpo: ppl τ = %.4f (quantile %.2f of logged panels' reference log-PPL)", tau, ppl.quantile)
    weights = resolve_weights(cfg.rewards, list(components), fused["weights"] if fused else None)
    return CompositeReward(components, weights, cfg.rewards.rule_constraint, cfg.rewards.rule_failing), tau
