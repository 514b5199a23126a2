"""Reward components for GRPO (SPEC 5.5), their weighted sum, and the two-stage fusion of weights.

One module per component, each a small class built from its `conf/rewards/` spec with one scoring
call on a `RewardBatch` (contexts + completion texts) returning one score per completion:
`garm` (μ − κσ), `btrm`, `external` (any HF sequence-classification RM), `rule`, `ppl` (OOD term),
`diversity`. `composite.CompositeReward` sums them with weights; `fusion` fits those weights on
held-out clicks. Nothing here imports the simulator: rewards see texts and trained models only.

Their configs (`rewards`, each component's `_target_` spec, `fusion`) live in the schema package
(`clicks2pref.config.rewards`, `clicks2pref.config.fusion`), which imports no torch, so checking a config loads
no model library; each component's module re-exports its own.
"""
