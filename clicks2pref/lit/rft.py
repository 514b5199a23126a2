"""Rejection-sampling fine-tuning (`optimizer=rft`; OpenRLHF's rejection sampling, expert iteration over rounds).

Training runs in `rounds`; a round is `steps / rounds` batches of prompts, then fine-tuning. `training_step`:
  1. sample `num_generations` completions per prompt (GRPOModule's sampler, the current policy);
  2. the composite reward of each (the rule constraint included; reference log-probs give the `ppl` term);
  3. keep the `top_n` best of each prompt that reach `threshold` as SFT targets (with grpo.mask_truncated_completions,
     only completions that ended: a cut one gets no loss, as in GRPO);
  4. on a round's last batch: `epochs` shuffled passes of masked NLL (`objectives.sft`'s loss on the completion
     tokens, temperature 1) over the round's targets, `train_batch_size` per clipped AdamW step; the targets
     are dropped and the next round samples from the fine-tuned policy.
With `rounds=1` every sample comes from the starting policy (best-of-n distillation); more rounds is expert
iteration. Metrics under `grpo/`: reward, reward_std, rewards/<component>/mean, completion_len, format_rate,
kept (targets kept this batch), kept_reward, loss (mean NLL of a round's last pass), grad_norm, and the
compute meter's `grpo/compute/*`.
"""
from __future__ import annotations

import math

import torch

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.lit.grpo_module import GRPOModule
from clicks2pref.lit.nonfinite import gradients_finite
from clicks2pref.models.logprobs import completion_logps, mean_nll, pad_prompt_completion


class RFTModule(GRPOModule):
    """GRPOModule's sampler, reward, reference, checkpoints and logging, with SFT on the best samples."""

    def __init__(self, model, tokenizer, reward, cfg, opt, k: int = 3, reference_model=None, total_steps=None,
                 batches: int = 1):
        super().__init__(model, tokenizer, reward, cfg, k=k, reference_model=reference_model, total_steps=total_steps)
        self.opt = opt
        self.per_round = math.ceil(batches / opt.rounds)
        self.batches = batches
        self.targets: list[tuple[list[int], list[int]]] = []  # (prompt ids, completion ids) of this round

    def training_step(self, batch, batch_idx):
        G, opt = self.cfg.group_size, self.opt
        self.compute.start_step()
        contexts = [c for c in batch["contexts"] for _ in range(G)]

        # 1. sample G completions per prompt
        prompts, completions, ended = self.sample(batch["messages"], G)
        ids, attention, mask = (t.to(self.device) for t in
                                pad_prompt_completion(prompts, completions, self.tokenizer.pad_token_id))
        texts = [t.strip() for t in self.tokenizer.batch_decode(completions, skip_special_tokens=True)]

        # 2. the composite reward (reference log-probs only for the `ppl` term)
        needs_ref = "ppl" in getattr(self.reward, "components", {})
        ref = self.reference_logps(ids, attention, mask.shape[1]) if needs_ref else None
        total, components = self.score(contexts, texts, ref, mask)

        # 3. the best of each prompt's samples become targets
        usable = ended if self.cfg.mask_truncated_completions else [True] * len(ended)
        kept = keep_best(total, usable, G, opt.top_n, opt.threshold)
        self.targets += [(prompts[i], completions[i]) for i in kept]

        # 4. at the end of a round, fine-tune on its targets
        metrics = {}
        last = self.batches_seen + 1
        if last % self.per_round == 0 or last == self.batches:
            metrics = self.fine_tune(self.targets)
            self.targets = []

        # 5. log
        parsed = [parse_suggestions(t, self.k) for t in texts]
        std = total.view(-1, G).std(1)
        metrics.update({"grpo/reward": float(torch.nanmean(total)), "grpo/reward_std": float(torch.nanmean(std)),
                        "grpo/kept": float(len(kept)),
                        "grpo/kept_reward": float(total[kept].mean()) if kept else float("nan"),
                        "grpo/completion_len": float(mask.sum(1).float().mean()),
                        "grpo/format_rate": sum(p.well_formed for p in parsed) / len(parsed),
                        **{f"grpo/rewards/{name}/mean": float(torch.nanmean(s)) for name, s in components.items()}})
        if ref is not None:
            metrics["grpo/ref_log_ppl"] = float(mean_nll(ref, mask).mean())
        self.keep_samples(contexts, texts, total, components)
        self.log_step(metrics, len(batch["messages"]))
        return None

    def fine_tune(self, targets: list) -> dict:
        """`epochs` shuffled passes of masked NLL over the targets; one optimiser step per `train_batch_size`."""
        if not targets:
            return {}
        opt, scheduler = self.optimizers(), self.lr_schedulers()
        g = torch.Generator().manual_seed(self.batches_seen)
        size, loss_value, grad_norm = self.opt.train_batch_size, None, None
        for _ in range(self.opt.epochs):
            order = torch.randperm(len(targets), generator=g).tolist()
            for s in range(0, len(order), size):
                chunk = [targets[i] for i in order[s:s + size]]
                opt.zero_grad()
                loss = self.nll_backward([p for p, _ in chunk], [c for _, c in chunk])
                params = [p for p in self.model.parameters() if p.requires_grad]
                if loss is None or not gradients_finite(params, self._trainer):
                    opt.zero_grad()
                    self._nonfinite("loss" if loss is None else "gradients")
                    continue
                self.nonfinite_in_a_row = 0
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                loss_value = loss
        metrics = {"grpo/loss": loss_value, "grpo/grad_norm": grad_norm} if loss_value is not None else {}
        if scheduler is not None:
            metrics["grpo/lr"] = float(scheduler.get_last_lr()[0])
        return metrics

    def nll_backward(self, prompts: list, completions: list):
        """Backward of the mean token NLL of the completions (normalised by the chunk's token count); the loss,
        or None when a micro-batch's loss is not finite."""
        ids, attention, mask = (t.to(self.device) for t in
                                pad_prompt_completion(prompts, completions, self.tokenizer.pad_token_id))
        n_tokens = mask.sum().clamp(min=1)
        total = 0.0
        for s in range(0, ids.shape[0], self.cfg.micro_batch_size):
            sl = slice(s, s + self.cfg.micro_batch_size)
            logps, _ = completion_logps(self.model, ids[sl], attention[sl], mask.shape[1])
            loss = -(logps * mask[sl]).sum() / n_tokens
            if not torch.isfinite(loss):
                return None
            self.manual_backward(loss) if self._trainer is not None else loss.backward()
            total += float(loss.detach())
        return total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rft"] = {"targets": self.targets}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.targets = [tuple(t) for t in checkpoint.get("rft", {}).get("targets", [])]


def keep_best(total: torch.Tensor, usable, group_size: int, top_n: int, threshold=None) -> list[int]:
    """Rows of the `top_n` highest rewards of each group among the usable completions that reach `threshold`
    (when set) and have a finite reward."""
    kept = []
    for g in range(0, len(total), group_size):
        rows = [i for i in range(g, min(g + group_size, len(total)))
                if usable[i] and torch.isfinite(total[i]) and (threshold is None or float(total[i]) >= threshold)]
        kept += sorted(rows, key=lambda i: -float(total[i]))[:top_n]
    return kept
