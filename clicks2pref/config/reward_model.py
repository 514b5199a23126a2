"""`reward_model`: GaRM and BTRM trained on click pairs (stage rm), read by rm, fusion, grpo and evaluate.

`reward_model.head` (`HeadConfig`) and the kinds `reward_model.kinds` accepts are read by
`clicks2pref.models.reward_heads`: each kind is a head class in its `HEADS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from clicks2pref.config.checks import at_least, fraction, one_of, positive
from clicks2pref.config.model import SMOLLM2, LoraConfig, ModelConfig
from clicks2pref.config.objectives import CLICK_MODELS, LIKELIHOODS, OBJECTIVES, REGULARIZERS
from clicks2pref.config.pairs import POSITION_FILTERS, PairConfig
from clicks2pref.errors import ConfigError

KINDS = ("garm", "btrm")  # GaRM: μ, σ per suggestion | BTRM: one reward (the Bradley-Terry baseline)
POOLINGS = ("last", "mean")


@dataclass
class HeadConfig:
    pooling: str = "last"  # last (last non-pad token; decoders) | mean (over tokens; encoders such as MiniLM)
    sigma_min: float = 0.01  # GaRM σ = softplus(raw) + sigma_min
    sigma_init: float = 1.0  # GaRM σ before training (the raw bias is set to give it)
    normalize: bool = True  # RMS-normalise the pooled feature (no weights): same head scale on any backbone
    init_std: float = 0.005  # std of the head's initial weights
    max_length: int = 128  # tokens per (context, suggestion) input


@dataclass
class CalibrationConfig:
    n_bins: int = 15  # equal-width ECE / reliability bins
    n_deciles: int = 10  # groups of the accuracy-by-confidence and accuracy-by-perplexity tables
    reference_ppl: bool = True  # accuracy by reference log-perplexity (a forward pass of policy.model per suggestion)
    batch_size: int = 32  # suggestions per scoring forward pass
    max_length: int = 256  # tokens of context + suggestion for the reference log-perplexity


@dataclass
class ClickModelConfig:
    """`objective=click_model`: how impressions are explained (`clicks2pref.objectives.click_model`)."""

    model: str = "cascade"  # cascade (stop at the first click) | pbm (independent positions)
    anchor: float = 1.0  # e_1, fixed: only e_k · a(s) is identified, so e is learned relative to position 1
    examination: str = "item_fit"  # item_fit: e_k from a per-suggestion click model, then fixed | joint: learned
    item_fit_steps: int = 2000  # Adam steps of the per-suggestion fit
    examination_init: float = 0.5  # joint: e_k, k > 1, before training
    examination_lr: float = 5.0e-2  # joint: learning rate of the examination logits
    redundancy: Optional[str] = "minilm-l6"  # embedder of the redundancy term (registry name | lexical); null = off
    redundancy_threshold_init: float = 1.0  # the term's similarity threshold before the fit (no discount below it)
    redundancy_weight_init: float = 10.0  # its slope before the fit
    redundancy_in_training: bool = False  # also discount each shown suggestion by the fitted g while the network learns

    def __post_init__(self):
        one_of("model", self.model, CLICK_MODELS)
        one_of("examination", self.examination, ("item_fit", "joint"))
        at_least("item_fit_steps", self.item_fit_steps, 1)
        fraction("anchor", self.anchor, open_low=True)
        fraction("examination_init", self.examination_init, open_low=True, open_high=True)
        positive("examination_lr", self.examination_lr)
        positive("redundancy_weight_init", self.redundancy_weight_init)
        if self.redundancy_in_training and not self.redundancy:
            raise ConfigError("true needs the redundancy term (redundancy: an embedder, not null)",
                              "redundancy_in_training")


def _variance_reg_init(self, kind: str = "kl_prior", **kwargs):
    self.kind = kind
    setattr(self, "lambda", kwargs.pop("lambda", 0.1))
    if kwargs:
        raise ConfigError(f"unexpected keys {', '.join(kwargs)}", "loss.variance_reg")
    one_of("kind", self.kind, REGULARIZERS)
    at_least("lambda", getattr(self, "lambda"), 0)


# GaRM's variance regulariser R and its weight λ. The key is `lambda` (SPEC 5.3), a Python keyword,
# so the dataclass is assembled by hand; read the value with getattr(cfg, "lambda") or cfg["lambda"].
VarianceRegConfig = dataclass(init=False, repr=False, eq=False)(type("VarianceRegConfig", (), {
    "__doc__": "kind: kl_prior | sigma_l2 | log_sigma_sq | none; lambda: its weight λ in the loss.",
    "__module__": __name__,
    "__annotations__": {"kind": str, "lambda": float},
    "kind": "kl_prior",
    "lambda": 0.1,
    "__init__": _variance_reg_init,
}))


@dataclass
class RewardLossConfig:
    likelihood: str = "probit"  # GaRM: probit (closed form) | mc_logistic (PURM-style samples)
    z_clamp: Optional[float] = 6.0  # probit: z clipped to [-z_clamp, z_clamp]; null = no clamp
    mc_samples: int = 16  # mc_logistic: reparameterised draws per pair
    variance_reg: VarianceRegConfig = field(default_factory=VarianceRegConfig)
    margin: Optional[float] = None  # BTRM: constant margin in −log σ(r_c − r_r − margin) (TRL's `margin`)
    center_rewards_coefficient: Optional[float] = None  # BTRM: TRL's reward-centring term weight

    def __post_init__(self):
        one_of("likelihood", self.likelihood, LIKELIHOODS)
        positive("z_clamp", self.z_clamp)
        at_least("mc_samples", self.mc_samples, 1)
        at_least("center_rewards_coefficient", self.center_rewards_coefficient, 0)


@dataclass
class RewardOptimConfig:
    epochs: int = 2  # passes over the training pairs (sets the Trainer's max_epochs for this stage)
    groups_per_batch: int = 4  # panels per batch (all their pairs; ~3 suggestions each)
    batch_by_context: bool = True  # a conversation's panels adjacent in the shuffled order (fewer per batch)
    lr: float = 2e-4  # LoRA adapters (or the whole backbone when lora is null)
    head_lr: float = 1e-3  # the μ/σ or reward head
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # linear warm-up share of the steps, then linear decay to 0

    def __post_init__(self):
        at_least("epochs", self.epochs, 1)
        at_least("groups_per_batch", self.groups_per_batch, 1)
        positive("lr", self.lr)
        positive("head_lr", self.head_lr)
        at_least("weight_decay", self.weight_decay, 0)
        fraction("warmup_ratio", self.warmup_ratio, open_high=True)


@dataclass
class RewardModelConfig:
    kinds: List[str] = field(default_factory=lambda: ["garm", "btrm"])
    objective: str = "click_model"  # click_model (every impression) | pairwise (clicked ≻ skipped pairs, the paper's)
    click_model: ClickModelConfig = field(default_factory=ClickModelConfig)
    backbone: ModelConfig = field(default_factory=lambda: ModelConfig(name=SMOLLM2, lora=LoraConfig()))
    head: HeadConfig = field(default_factory=HeadConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    optim: RewardOptimConfig = field(default_factory=RewardOptimConfig)
    shared_prefix: bool = True  # each distinct conversation of a batch runs once (`models.shared_prefix`)
    max_nonfinite_steps: int = 10
    checkpoint_every_n_steps: int = 25
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self):
        if not self.kinds:
            raise ConfigError("is empty; train at least one of garm, btrm", "kinds")
        for kind in self.kinds:
            one_of("kinds", kind, KINDS)
        one_of("objective", self.objective, OBJECTIVES)
        one_of("head.pooling", self.head.pooling, POOLINGS)
        positive("head.sigma_min", self.head.sigma_min)
        positive("head.sigma_init", self.head.sigma_init)
        at_least("head.max_length", self.head.max_length, 1)
        one_of("pairs.position_filter", self.pairs.position_filter, POSITION_FILTERS)
        fraction("pairs.val_fraction", self.pairs.val_fraction, open_high=True)
        at_least("calibration.batch_size", self.calibration.batch_size, 1)
        at_least("calibration.n_bins", self.calibration.n_bins, 1)
        at_least("max_nonfinite_steps", self.max_nonfinite_steps, 1)
        at_least("checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
