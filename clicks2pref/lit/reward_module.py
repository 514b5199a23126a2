"""Lightning training of one reward model (GaRM or BTRM) under one objective (SPEC 5.3): on click preference
pairs (`RewardModule`, `reward_model.objective=pairwise`), or on every impression under a click model
(`ClickRewardModule`, `objective=click_model`). What the objective reads (`clicks2pref.objectives.OBJECTIVES`)
picks the module and its loader (`reward_training`); the loss is the objective's `batch_loss`, and what differs
between GaRM and BTRM is the model's head (`clicks2pref.models.reward_heads.HEADS`).

A batch is a few whole panels: every distinct suggestion in it is scored once and the pairs index
into those scores, so the six users who saw one panel cost one forward pass per suggestion; with
`shared_prefix` each distinct conversation runs once too (`clicks2pref.models.shared_prefix`).
`training_step` reads in order: score → loss (the objective's `batch_loss`) → skip and count a non-finite
loss. Logged under `rm/<kind>/` every step: `train_loss`, `train_acc`,
`sigma_mean` and `sigma_std` (GaRM; σ over the batch's suggestions), `grad_norm` (before clipping);
per validation: `val_loss`, `val_acc`, `val_ece` (15 bins).
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryCalibrationError

from clicks2pref.data.impressions import group_examples, indexed
from clicks2pref.data.pairs import context_key, group_pairs
from clicks2pref.errors import ConfigError, ModelNotFoundError, NonFiniteLossError
from clicks2pref.lit.distributed import GlobalBatchSampler, ShardSampler, all_sum, global_mean_scale, world_and_rank
from clicks2pref.lit.nonfinite import drop_gradients, grad_scaler_active, gradients_finite
from clicks2pref.models.shared_prefix import collate_items, forward_items
from clicks2pref.models.similarity import PanelSimilarity
from clicks2pref.objectives import batch_loss, objective_reads
from clicks2pref.objectives.click_model import (examination, fit_item_examination, logit, redundancy_discount,
                                                 similarity_above)

log = logging.getLogger(__name__)


def _slots():
    """(slot, items): slot(context, text) -> the index of that distinct item in `items`."""
    index: dict[tuple[str, str], int] = {}
    items: list[tuple[list[dict], str]] = []

    def slot(context, text) -> int:
        key = (context_key(context), text)
        if key not in index:
            index[key] = len(items)
            items.append((context, text))
        return index[key]

    return slot, items


class PairCollator:
    """Groups of pairs → the model's padded inputs for their distinct suggestions + pair indices."""

    def __init__(self, model, shared_prefix: bool = False):
        self.model, self.shared_prefix = model, shared_prefix

    def __call__(self, groups: Sequence[list[dict]]) -> dict:
        slot, items = _slots()
        pairs = [p for g in groups for p in g]
        chosen = [slot(p["context"], p["chosen"]) for p in pairs]
        rejected = [slot(p["context"], p["rejected"]) for p in pairs]
        batch = collate_items(self.model, items, self.shared_prefix)
        batch["chosen"], batch["rejected"] = torch.tensor(chosen), torch.tensor(rejected)
        return batch


def panel_loader(groups: list, collate, groups_per_batch: int, shuffle: bool, seed: int = 0, world: int = 1,
                 rank: int = 0, by_context: bool = False) -> DataLoader:
    """Global batches of `groups_per_batch` panels, rank `rank`'s share of each (`lit.distributed`): shuffled
    (one seeded permutation per epoch, an incomplete last batch dropped) or in order (every panel once).
    `by_context` keeps a conversation's panels adjacent in the shuffled order, so a batch holds fewer distinct
    conversations (with `shared_prefix`, each runs through the backbone once per batch)."""
    if shuffle:
        if groups_per_batch % world:
            raise ConfigError(f"{groups_per_batch} panels per batch do not divide over {world} processes",
                              "reward_model.optim.groups_per_batch")
        clusters = [context_key(g[0]["context"]) for g in groups] if by_context else None
        sampler = GlobalBatchSampler(groups, groups_per_batch, world, rank, seed, clusters)
        return DataLoader(groups, batch_size=groups_per_batch // world, sampler=sampler, collate_fn=collate)
    return DataLoader(groups, batch_size=max(1, math.ceil(groups_per_batch / world)),
                      sampler=ShardSampler(groups, world, rank), collate_fn=collate)


def pair_loader(model, pairs: list[dict], groups_per_batch: int, shuffle: bool, seed: int = 0, world: int = 1,
                rank: int = 0, shared_prefix: bool = False, by_context: bool = False) -> DataLoader:
    """Batches of `groups_per_batch` panels' pairs (see `clicks2pref.data.pairs.group_pairs`)."""
    return panel_loader(group_pairs(pairs), PairCollator(model, shared_prefix), groups_per_batch, shuffle, seed,
                        world, rank, by_context)


class ImpressionCollator:
    """Groups of impression examples → padded inputs for their distinct suggestions, the [N, K] index of
    each shown position into them, clicks [N, K], panel lengths [N] and user counts [N]; and the redundancy
    discounts [N, K] when the examples carry them (`discount`, 1 past the panel's end)."""

    def __init__(self, model, positions: int, shared_prefix: bool = False):
        self.model, self.positions, self.shared_prefix = model, positions, shared_prefix

    def __call__(self, groups: Sequence[list[dict]]) -> dict:
        slot, items = _slots()
        examples = [e for g in groups for e in g]
        k = self.positions
        index = [[slot(e["context"], s) for s in e["suggestions"][:k]] for e in examples]
        batch = collate_items(self.model, items, self.shared_prefix)
        batch["items"] = torch.tensor([row + [0] * (k - len(row)) for row in index])
        batch["clicks"] = torch.tensor([(list(e["clicks"][:k]) + [0] * k)[:k] for e in examples])
        batch["lengths"] = torch.tensor([len(row) for row in index])
        batch["weights"] = torch.tensor([float(e["count"]) for e in examples])
        if "discount" in examples[0]:
            batch["discount"] = torch.tensor([(list(e["discount"][:k]) + [1.0] * k)[:k] for e in examples])
        return batch


def impression_loader(model, examples: list[dict], positions: int, groups_per_batch: int, shuffle: bool,
                      seed: int = 0, world: int = 1, rank: int = 0, shared_prefix: bool = False,
                      by_context: bool = False) -> DataLoader:
    """Batches of `groups_per_batch` panels (every order and click pattern logged for each)."""
    return panel_loader(group_examples(examples), ImpressionCollator(model, positions, shared_prefix),
                        groups_per_batch, shuffle, seed, world, rank, by_context)


class RewardData(pl.LightningDataModule):
    """The stage's loaders, built in each process once its rank is known (spawned DDP workers included).
    `make_loader(items, groups_per_batch=, shuffle=, seed=, world=, rank=)` is `pair_loader` or
    `impression_loader` with the model (and positions) bound."""

    def __init__(self, make_loader, train: list, val: list, groups_per_batch: int, seed: int):
        super().__init__()
        self.make_loader, self.train, self.val = make_loader, train, val
        self.groups_per_batch, self.seed = groups_per_batch, seed

    def _loader(self, items: list, shuffle: bool) -> DataLoader:
        world, rank = world_and_rank(self.trainer)
        return self.make_loader(items, groups_per_batch=self.groups_per_batch, shuffle=shuffle, seed=self.seed,
                                world=world, rank=rank)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val, shuffle=False) if self.val else []


class RewardModule(pl.LightningModule):
    """A reward model trained on pairs under `objective` (one that reads pairs)."""

    def __init__(self, model, loss_cfg, optim_cfg, max_nonfinite_steps: int = 10, n_bins: int = 15,
                 objective: str = "pairwise"):
        super().__init__()
        self.model, self.loss_cfg, self.optim_cfg = model, loss_cfg, optim_cfg
        self.batch_loss = batch_loss(objective)
        self.kind, self.prefix = model.kind, f"rm/{model.kind}"
        self.max_nonfinite_steps, self.n_bins = max_nonfinite_steps, n_bins
        self.nonfinite_steps = 0
        self.max_grad_norm = 0.0
        self.strict_loading = False  # checkpoints hold the trainable weights only (on_save_checkpoint)
        # validation over every process's shard: torchmetrics sums the states across processes on compute
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.val_ece = BinaryCalibrationError(n_bins=n_bins, norm="l1")

    # --- the maths of one batch -------------------------------------------------------------------

    def loss(self, out: dict, batch: dict, global_batch: bool = False) -> tuple[torch.Tensor, dict]:
        """The objective's loss on this process's batch, or with `global_batch` this process's share of the
        global batch's mean (each term scaled by its own count); and the detached parts for the log."""
        terms, parts = self.batch_loss(self.model.head, out, batch, self.loss_cfg, **self.objective_state())
        parts["loss"] = sum(mean.detach() for mean, _ in terms)  # this process's own loss, for the log
        total = None
        for mean, count in terms:
            if global_batch:
                mean = mean * global_mean_scale(self._trainer, count).to(mean.dtype)
            total = mean if total is None else total + mean
        return total, parts

    def objective_state(self) -> dict:
        """What the objective's `batch_loss` reads besides the head's outputs (learned beside the model)."""
        return {}

    def confidence(self, out: dict, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence of the picked side, picked the chosen one) per pair: the head's link of |margin|."""
        margin = self.model.head.pair_margin(out, chosen, rejected)
        return self.model.head.link(margin.abs()), margin > 0

    def fitted(self) -> dict:
        """What training learned beside the network, stored with the model (`save_reward_model`)."""
        return {}

    # --- training --------------------------------------------------------------------------------

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every process's loss is finite: a step is skipped everywhere or nowhere."""
        world = self.trainer.world_size if self._trainer is not None else 1
        return bool(all_sum(self._trainer, torch.isfinite(loss).float()) == world)

    def training_step(self, batch, batch_idx):
        out = forward_items(self.model, batch)
        loss, parts = self.loss(out, batch, global_batch=True)  # this process's share of the global batch's mean
        if not self.all_finite(loss):
            return self._skip_nonfinite()
        n = len(batch["chosen"])
        _, correct = self.confidence(out, batch["chosen"], batch["rejected"])
        metrics = {"train_loss": parts.pop("loss"), "train_acc": correct.float().mean(),
                   **{f"train_{k}": v for k, v in parts.items()}, **self.model.head.batch_stats(out)}
        self.log_dict({f"{self.prefix}/{k}": v for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=n)
        return loss

    def _skip_nonfinite(self, what: str = "loss"):
        self.nonfinite_steps += 1
        self.log(f"{self.prefix}/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        log.warning("%s: non-finite %s at step %d, skipped (%d of at most %d)", self.prefix, what, self.global_step,
                    self.nonfinite_steps, self.max_nonfinite_steps)
        if self.nonfinite_steps >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"reward model {self.kind}: {self.nonfinite_steps} steps with a non-finite loss or gradients (the "
                f"limit is reward_model.max_nonfinite_steps={self.max_nonfinite_steps}); lower reward_model.optim.lr, "
                f"raise reward_model.loss.variance_reg.lambda or check the pairs")
        return None

    def on_before_optimizer_step(self, optimizer):
        """After backward, before clipping: a step with non-finite gradients is dropped (see `lit.nonfinite`)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not grad_scaler_active(self._trainer) and not gradients_finite(params, self._trainer):
            drop_gradients(params)
            self._skip_nonfinite("gradients")
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros(())
        self.max_grad_norm = max(self.max_grad_norm, float(norm))
        self.log(f"{self.prefix}/grad_norm", norm, on_step=True, on_epoch=False)

    # --- validation ------------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx):
        out = forward_items(self.model, batch)
        loss, _ = self.loss(out, batch)
        conf, correct = self.confidence(out, batch["chosen"], batch["rejected"])
        self.val_loss.update(loss.detach(), weight=len(conf))
        self.val_acc.update(correct.float())
        self.val_ece.update(conf.detach(), correct.long())

    def on_validation_epoch_end(self):
        metrics = {"val_loss": self.val_loss, "val_acc": self.val_acc, "val_ece": self.val_ece}
        self.log_validation(metrics)

    def log_validation(self, metrics: dict, extra: Optional[dict] = None) -> None:
        """Compute (summed over processes), log on every rank alike, reset; nothing during the sanity check."""
        if not self.trainer.sanity_checking:
            values = {f"{self.prefix}/{k}": m.compute().float() for k, m in metrics.items()}
            self.log_dict({**values, **{f"{self.prefix}/{k}": v for k, v in (extra or {}).items()}})
        for m in metrics.values():
            m.reset()

    # --- optimisation and checkpoints ---------------------------------------------------------------

    def configure_optimizers(self):
        cfg = self.optim_cfg
        optimizer = torch.optim.AdamW(self.param_groups(), weight_decay=cfg.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(cfg.warmup_ratio * total)

        def factor(step: int) -> float:  # linear warm-up, then linear decay to 0 (TRL's default schedule)
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_groups(self) -> list[dict]:
        cfg = self.optim_cfg
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        body = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return [{"params": head, "lr": cfg.head_lr}] + ([{"params": body, "lr": cfg.lr}] if body else [])

    def on_save_checkpoint(self, checkpoint):
        """Keep only trainable weights: a LoRA run's checkpoint is the adapter and head, not the base."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["nonfinite_steps"], checkpoint["max_grad_norm"] = self.nonfinite_steps, self.max_grad_norm

    def on_load_checkpoint(self, checkpoint):
        self.nonfinite_steps = checkpoint.get("nonfinite_steps", 0)
        self.max_grad_norm = checkpoint.get("max_grad_norm", 0.0)


class ClickRewardModule(RewardModule):
    """The same reward model trained on every impression: a click model whose attractiveness is the
    reward model's output and whose examination probabilities are learned beside it.

    Logged under `rm/<kind>/`: `train_loss`, `train_nll`, `train_reg` (GaRM), `exam_<k>` per position,
    `grad_norm`; per validation `val_loss` (the impression NLL) and `val_exam_<k>`.
    """

    def __init__(self, model, loss_cfg, optim_cfg, click_cfg, positions: int, max_nonfinite_steps: int = 10,
                 n_bins: int = 15, fixed_examination: Optional[Sequence[float]] = None,
                 redundancy: Optional[dict] = None, objective: str = "click_model"):
        super().__init__(model, loss_cfg, optim_cfg, max_nonfinite_steps, n_bins, objective)
        self.click_cfg, self.positions, self.redundancy = click_cfg, positions, redundancy
        start = [logit(e) for e in fixed_examination[1:positions]] if fixed_examination is not None else \
            [logit(click_cfg.examination_init)] * (positions - 1)
        self.exam_logits = torch.nn.Parameter(torch.tensor(start), requires_grad=fixed_examination is None)

    def examination(self) -> torch.Tensor:
        return examination(self.click_cfg.anchor, self.exam_logits)

    def learned_examination(self) -> list[float]:
        return [float(v) for v in self.examination().detach()]

    def objective_state(self) -> dict:
        return {"examination": self.examination(), "model": self.click_cfg.model}

    def fitted(self) -> dict:
        """e_k and the redundancy term, which the reward reads from the saved model (`rewards.garm`)."""
        self.model.examination, self.model.redundancy = self.learned_examination(), self.redundancy
        return {"examination": self.model.examination, "redundancy": self.redundancy}

    def click_loss(self, batch, global_batch: bool = False) -> tuple[torch.Tensor, dict]:
        """The objective's loss on a batch of impressions (`objectives.click_model.batch_loss`); `global_batch`
        turns each term into this process's share of the global batch's mean (exact when no suggestion is in
        two processes' shares of a batch, else close)."""
        return self.loss(forward_items(self.model, batch), batch, global_batch)

    def training_step(self, batch, batch_idx):
        loss, parts = self.click_loss(batch, global_batch=True)
        if not self.all_finite(loss):
            return self._skip_nonfinite()
        local = parts.pop("loss")
        metrics = {"train_loss": local, **{f"train_{k}": v for k, v in parts.items()},
                   **{f"exam_{k + 1}": v for k, v in enumerate(self.learned_examination())}}
        self.log_dict({f"{self.prefix}/{k}": v for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch["lengths"]))
        return loss

    def validation_step(self, batch, batch_idx):
        _, parts = self.click_loss(batch)
        self.val_loss.update(parts["nll"], weight=batch["weights"].sum())

    def on_validation_epoch_end(self):
        self.log_validation({"val_loss": self.val_loss},
                            {f"val_exam_{k + 1}": v for k, v in enumerate(self.learned_examination())})

    def param_groups(self) -> list[dict]:
        if not self.exam_logits.requires_grad:  # fixed from the per-suggestion fit
            return super().param_groups()
        return super().param_groups() + [{"params": [self.exam_logits], "lr": self.click_cfg.examination_lr}]


# --- one objective's module and data ---------------------------------------------------------------------------


def pair_training(model, rm, splits: dict, examples: dict, seed: int) -> tuple[RewardModule, RewardData]:
    """An objective that reads pairs: `RewardModule` on the clicked ≻ skipped pairs of `splits`."""
    module = RewardModule(model, rm.loss, rm.optim, rm.max_nonfinite_steps, rm.calibration.n_bins, rm.objective)
    data = RewardData(partial(pair_loader, model, shared_prefix=rm.shared_prefix, by_context=rm.optim.batch_by_context),
                      splits["train"], splits["val"], rm.optim.groups_per_batch, seed)
    return module, data


def impression_training(model, rm, splits: dict, examples: dict, seed: int) -> tuple[RewardModule, RewardData]:
    """An objective that reads impressions: `ClickRewardModule` on every impression of `examples`, with the
    examination fixed from the per-suggestion click model (`click_model.examination=item_fit`) and the
    redundancy term fitted beside it (`click_model.redundancy`), both from the training impressions."""
    positions = max(len(e["suggestions"]) for e in examples["train"])
    cm = rm.click_model
    fixed = redundancy = None
    if cm.examination == "item_fit" or cm.redundancy:
        similarity = PanelSimilarity(cm.redundancy) if cm.redundancy else None  # one embedding cache, train and val
        above = similarity_above_examples(examples["train"], positions, similarity) if similarity else None
        fitted, redundancy = fit_item_examination(
            *indexed(examples["train"], positions), anchor=cm.anchor, model=cm.model, steps=cm.item_fit_steps,
            sim_above=above, threshold_init=cm.redundancy_threshold_init, weight_init=cm.redundancy_weight_init)
        if cm.examination == "item_fit":
            fixed = fitted
            log.info("rm: examination from the per-suggestion click model: %s", ", ".join(f"{e:.3f}" for e in fixed))
        if redundancy:
            redundancy = {"embedder": cm.redundancy, **redundancy}
            log.info("rm: redundancy term g = 1 − sigmoid(%.2f·(sim − %.3f)) (%s similarity)",
                     redundancy["weight"], redundancy["threshold"], cm.redundancy)
            if cm.redundancy_in_training:
                val_above = similarity_above_examples(examples["val"], positions, similarity) if examples["val"] \
                    else None
                examples = {**examples, "train": with_discounts(examples["train"], above, redundancy),
                            "val": with_discounts(examples["val"], val_above, redundancy)}
    module = ClickRewardModule(model, rm.loss, rm.optim, cm, positions, rm.max_nonfinite_steps, rm.calibration.n_bins,
                               fixed, redundancy, rm.objective)
    data = RewardData(partial(impression_loader, model, positions=positions, shared_prefix=rm.shared_prefix,
                              by_context=rm.optim.batch_by_context),
                      examples["train"], examples["val"], rm.optim.groups_per_batch, seed)
    return module, data


TRAINING = {"pairs": pair_training, "impressions": impression_training}  # what an objective reads → its module


def reward_training(model, rm, splits: dict, examples: dict, seed: int) -> tuple[RewardModule, RewardData]:
    """The Lightning module and data that train `model` under `rm.objective` (`rm`: the reward_model config;
    `splits`: pairs per split; `examples`: impression examples per split)."""
    return TRAINING[objective_reads(rm.objective)](model, rm, splits, examples, seed)


def with_discounts(examples: list[dict], sim_above: Optional[torch.Tensor], redundancy: dict) -> list[dict]:
    """Copies of impression examples carrying each shown position's fitted discount g (`discount`)."""
    if not examples:
        return examples
    g = redundancy_discount(sim_above, redundancy["weight"], redundancy["threshold"])
    return [{**e, "discount": row.tolist()} for e, row in zip(examples, g)]


def similarity_above_examples(examples: list[dict], positions: int, similarity: PanelSimilarity) -> torch.Tensor:
    """[N, K] each shown position's largest similarity to the positions above it in that impression."""
    try:
        similarity.prefetch(s for e in examples for s in e["suggestions"])
    except ModelNotFoundError as e:
        raise ConfigError(f"{similarity.embedder!r}: {e}; name a registry sentence embedder or lexical",
                          "reward_model.click_model.redundancy") from None
    return torch.stack([similarity_above(torch.as_tensor(similarity.matrix(e["suggestions"][:positions]),
                                                         dtype=torch.float64), positions) for e in examples])
