"""The SFT LightningModule: masked next-token loss on chat-formatted targets (policy and teacher).

`training_step` reads top to bottom: forward -> loss summed over target tokens -> divided by the
target-token count of the whole global batch (summed over processes), so N processes take the same
step as one. A non-finite loss skips the step on every process and is counted, and so does a finite loss
whose gradients are not (`clicks2pref.lit.nonfinite`); more than `max_nonfinite_steps` in a row stop
training with NonFiniteLossError. Validation sums loss and
token counts over the epoch and reduces them across processes before dividing; then a few held-out
prompts are generated and parsed for the format pass rate. Validation before the first step and
after the last one runs inside `fit` (`validate_outside_loop`), so a spawned DDP run launches once.

Metrics (prefix `sft`, or `teacher` for the teacher): `<p>/train_loss`, `<p>/lr`, `<p>/val_loss`,
`<p>/val_format_rate`, `<p>/val_loss_before`, `<p>/val_format_rate_before`, `<p>/nonfinite_steps`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch

from clicks2pref.config.model import GenerationConfig
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.errors import NonFiniteLossError
from clicks2pref.models.generate import generate
from clicks2pref.objectives.sft import IGNORE_INDEX, masked_lm_loss
from clicks2pref.lit.distributed import all_sum, share_cpu_threads, world_and_rank
from clicks2pref.lit.nonfinite import drop_gradients, grad_scaler_active, gradients_finite


class SFTModule(pl.LightningModule):
    def __init__(self, model, optimizer: Callable, scheduler: Optional[Callable] = None, prefix: str = "sft",
                 tokenizer=None, format_prompts: Sequence[list[dict]] = (), format_k: int = 3,
                 generation: Optional[GenerationConfig] = None, max_nonfinite_steps: int = 10,
                 validate_at_start: bool = False, validate_at_end: bool = True):
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.prefix, self.tokenizer = prefix, tokenizer
        self.format_prompts, self.format_k = list(format_prompts), format_k
        self.generation = generation or GenerationConfig(do_sample=False)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.strict_loading = False  # checkpoints hold the trainable weights only (LoRA: the adapters)
        self.validate_at_start, self.validate_at_end = validate_at_start, validate_at_end
        self._val_sum = self._val_tokens = None
        self._last_val_step = -1

    def setup(self, stage: str) -> None:
        share_cpu_threads(self.trainer, self.device)

    # --- helpers -------------------------------------------------------------------------------
    def _sum(self, value: torch.Tensor) -> torch.Tensor:
        return all_sum(self.trainer, value)

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep: int = 0):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=logits_to_keep).logits

    def loss_sum(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed target-token loss, target-token count) of a batch.

        Logits are computed only from the position before the earliest target token on: with
        left-padded batches that is the last few positions, which spares most of the LM head's cost.
        """
        labels = batch["labels"]
        first = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        keep = labels.size(1) - int(first[0]) + 1 if len(first) else 1
        keep = min(keep, labels.size(1))
        logits = self(batch["input_ids"], batch["attention_mask"], batch.get("position_ids"), keep)
        return masked_lm_loss(logits, labels[:, labels.size(1) - keep:])

    # --- training ------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        total, n = self.loss_sum(batch)
        n_global = self._sum(n.float()).clamp(min=1)
        loss = total * self.trainer.world_size / n_global  # DDP averages gradients over processes
        finite = self._sum(torch.isfinite(loss).float()) == self.trainer.world_size
        if not finite:
            self.count_nonfinite("losses")
            return None  # every process skips backward and the optimizer step
        self.log(f"{self.prefix}/train_loss", self._sum(total.float()) / n_global, on_step=True, on_epoch=False,
                 batch_size=batch["input_ids"].size(0))
        schedulers = self.lr_schedulers()
        if schedulers is not None:
            self.log(f"{self.prefix}/lr", schedulers.get_last_lr()[0], on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        """Runs after backward, before clipping: a step with non-finite gradients is dropped (see `lit.nonfinite`)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if all(p.grad is None for p in params):
            return  # the loss was not finite: no backward ran, and the step is already counted
        if grad_scaler_active(self.trainer) or gradients_finite(params, self.trainer):
            self.nonfinite_in_a_row = 0  # a step is taken
            return
        drop_gradients(params)
        self.count_nonfinite("gradients")

    def count_nonfinite(self, what: str) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        self.log(f"{self.prefix}/nonfinite_steps", float(self.nonfinite_total))
        if self.nonfinite_in_a_row > self.max_nonfinite_steps:
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} steps in a row with non-finite {what}; lower the "
                                     "learning rate, train in fp32 or check the data (max_nonfinite_steps)")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # --- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        total, n = self.loss_sum(batch)
        self._val_sum += total.double()
        self._val_tokens += n.double()

    def on_validation_epoch_end(self):
        total, n = self._sum(self._val_sum), self._sum(self._val_tokens)
        if n > 0:
            self.log(f"{self.prefix}/val_loss", (total / n).float(), sync_dist=False)
        if self.format_prompts and self.tokenizer is not None and not self.trainer.sanity_checking:
            self.log(f"{self.prefix}/val_format_rate", self.format_rate(), sync_dist=False)
        self._last_val_step = self.trainer.global_step

    def on_train_start(self):
        """Validation before the first step (`<p>/val_loss_before`); skipped when resuming."""
        if self.validate_at_start and self.trainer.global_step == 0:
            self.validate_outside_loop("_before")

    def on_train_end(self):
        """Validation after the last step, unless the periodic validation just ran there."""
        if self.validate_at_end and self._last_val_step != self.trainer.global_step:
            self.validate_outside_loop("")

    @torch.no_grad()
    def validate_outside_loop(self, suffix: str) -> None:
        """The validation metrics computed here, outside Lightning's loop (so a spawned DDP fit needs no
        second `trainer.validate` launch); stored in `trainer.callback_metrics` and sent to the loggers."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not datamodule.val_set:
            return
        loader = datamodule.val_shard(*world_and_rank(self.trainer))
        was_training = self.training
        self.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in loader:
            t, c = self.loss_sum({k: v.to(self.device) for k, v in batch.items()})
            total, n = total + t.double(), n + c.double()
        metrics = {f"{self.prefix}/val_loss{suffix}": float(self._sum(total) / self._sum(n).clamp(min=1))}
        if self.format_prompts and self.tokenizer is not None:
            metrics[f"{self.prefix}/val_format_rate{suffix}"] = self.format_rate()
        self.train(was_training)
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=self.trainer.global_step)

    @torch.no_grad()
    def format_rate(self) -> float:
        """Share of this process's slice of the probe prompts answered in the exact format, summed over ranks."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        prompts = self.format_prompts[rank::world]
        outs = generate(self.model, self.tokenizer, prompts, self.generation, seed=0) if prompts else []
        ok = torch.tensor([sum(parse_suggestions(o, self.format_k).well_formed for o in outs), len(outs)],
                          dtype=torch.float64, device=self.device)
        ok = self._sum(ok)
        return float(ok[0] / ok[1].clamp(min=1))

    # --- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights: a LoRA checkpoint is megabytes, not the whole base model."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
