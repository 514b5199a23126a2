"""Reward components for GRPO (SPEC 5.5), their weighted sum, and the two-stage fusion of weights.

One module per component, each a small class built from its `conf/rewards/` spec with one scoring
call on a `RewardBatch` (contexts + completion texts) returning one score per completion:
`garm` (μ − κσ), `btrm`, `external` (any HF sequence-classification RM), `rule`, `ppl` (OOD term),
`diversity`. `composite.CompositeReward` sums them with weights; `fusion` fits those weights on
held-out clicks. Nothing here imports the simulator: rewards see texts and trained models only.

Their configs (`rewards`, `fusion`, each component's `_target_` spec) are all in `configs`, which imports
no torch, so `clicks2pref.config` can check a config without loading a model library.
"""
