"""The GRPO LightningModule (SPEC 5.5): sample → score → advantage → clipped surrogate + β·KL, in that order.

`training_step` on a batch of prompts:
  1. sample `group_size` completions per prompt with the current policy (no grad, `model.generate`, each
     prompt prefilled once for its group: `clicks2pref.models.shared_prompt`; or a colocated vLLM engine,
     `grpo.use_vllm`: `clicks2pref.models.vllm_rollout`);
  2. reference log-probs (LoRA: the same model under `disable_adapter()`, never a second copy) and, when
     `num_iterations` > 1, the old policy's log-probs, both without grad;
  3. the composite reward of each completion (the reference log-probs give the `ppl` term for free);
  4. group-relative advantages (`clicks2pref.objectives.grpo.group_advantages`);
  5. `num_iterations` optimiser steps on `clicks2pref.objectives.grpo.grpo_loss`, micro-batched.
The math is the objectives module's, which tests/test_grpo_objective.py checks against TRL's own code,
so this loop inherits that parity. Optimisation is manual: one batch of samples feeds
`num_iterations` optimiser steps, which Lightning's automatic loop cannot express.

Knobs (ours → TRL `GRPOConfig`): group_size → num_generations; prompts_per_step × group_size →
generation_batch_size; max_completion_length, temperature, top_p, top_k, beta, epsilon, epsilon_high,
scale_rewards, loss_type (token ↔ bnpo/dapo, sequence ↔ grpo, dr_grpo ↔ dr_grpo), num_iterations,
importance_sampling_level, use_bias_correction_kl, mask_truncated_completions, learning_rate,
weight_decay, max_grad_norm, warmup_steps, lr_scheduler (lr_scheduler_type) — same names, same meaning.
micro_batch_size is our per-forward chunk (TRL: per_device_train_batch_size with gradient accumulation
over one generation batch); the loss is normalised over the whole batch either way.

Several processes (`trainer=ddp_cpu`, `ddp`, `fsdp`): `prompts_per_step` is the global batch, each process
samples its share of the prompts with its own random stream, the loss is normalised by the global batch's
token (or sequence) count and DDP averages the gradients, so the update is the one-process update of the
same samples (tests/test_grpo_ddp.py). Metrics are rank 0's share. (`stage=grpo` does not yet run in
spawned processes: its reward components and oracle monitor do not pickle.)

Metrics (under `grpo/`, TRL's names in brackets): reward [reward], reward_std [reward_std],
rewards/<component>/mean [rewards/<f>/mean], kl [kl], clip_ratio [clip_ratio/region_mean] and
clip_ratio/{low_mean,high_mean}, entropy [entropy], completion_len [completions/mean_length],
frac_zero_std [frac_reward_zero_std], format_rate, loss, grad_norm, lr, nonfinite_steps, and what the step
spent, `compute/*` and `compute/total_*` (`clicks2pref.lit.compute`); sample completions are kept in `samples`
(written as a table by the stage). The other policy optimisers (`lit.rft`, `lit.dpo_module`) subclass this
module for its sampler, reward, reference, checkpoints and logging.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.errors import ConfigError, NonFiniteLossError
from clicks2pref.lit.compute import ComputeMeter
from clicks2pref.lit.distributed import ShardSampler, all_sum, share_cpu_threads, world_and_rank
from clicks2pref.lit.nonfinite import grad_scaler_active, gradients_finite
from clicks2pref.models.adapters import merged_adapters
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.sampling import greedy_kwargs, sampling_kwargs
from clicks2pref.models.shared_prompt import generate_grouped, grouped_completion_logps, is_grouped
from clicks2pref.objectives.grpo import LOSS_TYPES, group_advantages, grpo_loss
from clicks2pref.rewards.base import RewardBatch
from clicks2pref.models.logprobs import completion_logps, mean_nll, pad_prompt_completion
from clicks2pref.config.grpo import GRPOConfig

log = logging.getLogger(__name__)


class PromptCollator:
    """Lists of each field; `context` becomes `contexts`, any other field (a logged pair's texts) keeps its name."""

    def __call__(self, items: list[dict]) -> dict:
        out = {"messages": [i["messages"] for i in items], "contexts": [i["context"] for i in items]}
        out.update({k: [i[k] for i in items] for k in items[0] if k not in ("messages", "context")})
        return out


def prompt_loader(items: Sequence[dict], prompts_per_step: int, steps: int, seed: int = 0, world: int = 1,
                  rank: int = 0) -> DataLoader:
    """`steps` batches of prompts: shuffled passes over `items` ({"messages", "context"}), concatenated.

    `prompts_per_step` is the global batch: process `rank` of `world` loads every world-th prompt in order,
    `prompts_per_step / world` per step, so step i covers the same prompts as on one process."""
    if prompts_per_step % world:
        raise ConfigError(f"{prompts_per_step} prompts per step do not divide over {world} processes",
                          "grpo.prompts_per_step")
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * prompts_per_step:
        order += torch.randperm(len(items), generator=g).tolist()
    chosen = [items[i] for i in order[: steps * prompts_per_step]]
    return DataLoader(chosen, batch_size=prompts_per_step // world, sampler=ShardSampler(chosen, world, rank),
                      collate_fn=PromptCollator())


class PromptData(pl.LightningDataModule):
    """`prompt_loader` built in each process once its rank is known (spawned DDP workers included)."""

    def __init__(self, items: Sequence[dict], prompts_per_step: int, steps: int, seed: int = 0):
        super().__init__()
        self.items, self.prompts_per_step, self.steps, self.seed = list(items), prompts_per_step, steps, seed

    def train_dataloader(self) -> DataLoader:
        world, rank = world_and_rank(self.trainer)
        return prompt_loader(self.items, self.prompts_per_step, self.steps, self.seed, world, rank)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class GRPOModule(pl.LightningModule):
    def __init__(self, model, tokenizer, reward, cfg: GRPOConfig, k: int = 3, reference_model=None,
                 total_steps: Optional[int] = None):
        super().__init__()
        if cfg.loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo.loss_type: unknown {cfg.loss_type!r}; accepted: {', '.join(LOSS_TYPES)}")
        if cfg.group_size < 2 and cfg.scale_rewards == "group":
            log.warning("grpo.group_size=1: every advantage is 0 under scale_rewards=group")
        self.automatic_optimization = False
        self.model, self.tokenizer, self.reward, self.cfg, self.k = model, tokenizer, reward, cfg, k
        self.reference_model = reference_model  # only for full fine-tuning; LoRA uses disable_adapter()
        if reference_model is not None:
            reference_model.requires_grad_(False).eval()
        self.total_steps = total_steps
        self.eos_ids = self._eos_ids()
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self.nonfinite_in_a_row = self.nonfinite_total = 0
        self.samples: list[dict] = []
        self.batches_seen = 0
        self.rollout = None  # a models.vllm_rollout.VLLMRollout samples instead of `generate` (grpo.use_vllm)
        self.compute = ComputeMeter()  # what training spends (lit.compute), logged as grpo/compute/*

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
        return {i for i in ids if i is not None}

    # --- the reference ------------------------------------------------------------------------
    @property
    def has_reference(self) -> bool:
        return self.reference_model is not None or is_peft(self.model)

    def reference_context(self):
        """Context in which `self.model` is the reference: adapters off for LoRA, a no-op otherwise."""
        return self.model.disable_adapter() if self.reference_model is None and is_peft(self.model) \
            else contextlib.nullcontext()

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, messages: Sequence[list[dict]], n: int, greedy: bool = False
               ) -> tuple[list[list[int]], list[list[int]], list[bool]]:
        """n completions per prompt (grouped): prompt ids, completion ids up to and including the first end
        token, and whether each completion ended (False = cut at max_completion_length)."""
        cfg, pad = self.cfg, self.tokenizer.pad_token_id
        unique = chat_inputs(self.tokenizer, messages)
        prompts = [p for p in unique for _ in range(n)]
        if self.rollout is not None:
            self.rollout.sync(self.model, self.global_step)
            completions, ended = self.rollout.generate(unique, n, cfg.max_completion_length, self.eos_ids,
                                                       cfg.temperature, cfg.top_p, cfg.top_k, greedy)
            self.compute.generated(completions)
            return prompts, completions, ended
        width = max(len(p) for p in unique)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in unique], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in unique], device=self.device)
        kwargs = greedy_kwargs() if greedy else sampling_kwargs(cfg.temperature, cfg.top_k, cfg.top_p)
        was_training = self.model.training
        self.model.eval()
        with merged_adapters(self.model), self.compute.sampling():
            out = generate_grouped(self.model, input_ids, attention, n, max_new_tokens=cfg.max_completion_length,
                                   pad_token_id=pad, eos_token_id=sorted(self.eos_ids), **kwargs)
        self.model.train(was_training)
        completions, ended = [], []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            completions.append(row[:cut + 1] if cut is not None else row)
            ended.append(cut is not None)
        self.compute.generated(completions)
        return prompts, completions, ended

    def _logps(self, model, ids, attention, n, entropy=False):
        """Completion log-probs over micro-batches (whatever grad mode the caller is in)."""
        parts, ents = [], []
        for start in range(0, ids.shape[0], self.cfg.micro_batch_size):
            sl = slice(start, start + self.cfg.micro_batch_size)
            lp, ent = self.completion_logps(model, ids[sl], attention[sl], n, entropy)
            parts.append(lp)
            ents.append(ent)
        return torch.cat(parts), (torch.cat(ents) if entropy else None)

    def completion_logps(self, model, ids, attention, n, entropy=False):
        """Log-probs of the last `n` tokens of each row; a group's shared prompt runs once when the rows come
        grouped (`models.shared_prompt`), the full rows otherwise."""
        if is_grouped(ids, ids.shape[1] - n, self.cfg.group_size):
            return grouped_completion_logps(model, ids, attention, n, self.cfg.group_size, self.cfg.temperature,
                                            entropy)
        return completion_logps(model, ids, attention, n, self.cfg.temperature, entropy)

    @torch.no_grad()
    def reference_logps(self, ids, attention, n):
        if not self.has_reference:
            return None
        with self.reference_context():
            model = self.reference_model if self.reference_model is not None else self.model
            return self._logps(model, ids, attention, n)[0]

    # --- scoring ------------------------------------------------------------------------------
    def score(self, contexts: Sequence[list[dict]], texts: Sequence[str], ref_logps=None, completion_mask=None):
        """Composite reward (total, components) of completions; reference log-PPL from ref_logps when given."""
        ref_log_ppl = mean_nll(ref_logps, completion_mask).double().cpu() if ref_logps is not None else None
        return self.reward(RewardBatch(list(contexts), list(texts), self.k, ref_log_ppl))

    @torch.no_grad()
    def probe(self, messages: Sequence[list[dict]], contexts: Sequence[list[dict]]):
        """Greedy completions for probe prompts and their proxy reward (for the reward-hacking monitor)."""
        prompts, completions, _ = self.sample(messages, 1, greedy=True)
        ids, attention, mask = pad_prompt_completion(prompts, completions, self.tokenizer.pad_token_id)
        ids, attention, mask = ids.to(self.device), attention.to(self.device), mask.to(self.device)
        ref = self.reference_logps(ids, attention, mask.shape[1])
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        total, _ = self.score(contexts, texts, ref, mask)
        return texts, total

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg, G = self.cfg, self.cfg.group_size
        self.compute.start_step()
        contexts = [c for c in batch["contexts"] for _ in range(G)]

        # 1. sample G completions per prompt
        prompts, completions, ended = self.sample(batch["messages"], G)
        ids, attention, mask = pad_prompt_completion(prompts, completions, self.tokenizer.pad_token_id)
        ids, attention, mask = ids.to(self.device), attention.to(self.device), mask.to(self.device)
        texts = [t.strip() for t in self.tokenizer.batch_decode(completions, skip_special_tokens=True)]
        n = mask.shape[1]

        # 2. reference and old log-probs (no grad)
        needs_ref = cfg.beta != 0.0 or "ppl" in getattr(self.reward, "components", {})
        ref = self.reference_logps(ids, attention, n) if needs_ref else None
        with torch.no_grad():
            old = self._logps(self.model, ids, attention, n)[0] if cfg.num_iterations > 1 else None

        # 3. rewards
        total, components = self.score(contexts, texts, ref, mask)
        rewards = total.to(torch.float32).to(self.device)

        # 4. group-relative advantages
        advantages, std = group_advantages(rewards, G, cfg.scale_rewards)
        loss_mask = mask * torch.tensor(ended, device=self.device).unsqueeze(1) if cfg.mask_truncated_completions \
            else mask

        # 5. num_iterations optimiser steps on the clipped surrogate + β·KL
        opt = self.optimizers()
        scheduler = self.lr_schedulers()
        entropy = loss_value = grad_norm = None
        stats = {}
        for iteration in range(cfg.num_iterations):
            opt.zero_grad()
            loss_sum, logps, ent = self.backward_loss(ids, attention, loss_mask, old, ref, advantages,
                                                      entropy=iteration == 0)
            params = [p for p in self.model.parameters() if p.requires_grad]
            if logps is None or (not grad_scaler_active(self._trainer)  # 16-bit AMP's scaler skips on its own
                                 and not gradients_finite(params, self._trainer)):  # skip this optimiser step
                opt.zero_grad()
                self._nonfinite("loss" if logps is None else "gradients")
                continue
            self.nonfinite_in_a_row = 0
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            opt.step()
            if scheduler is not None:
                scheduler.step()
            loss_value = loss_sum
            with torch.no_grad():  # batch-level stats from the log-probs this iteration used
                _, stats = grpo_loss(logps, old, ref, advantages, loss_mask, **self.loss_kwargs())
            if ent is not None:
                entropy = float((ent * mask).sum() / mask.sum().clamp(min=1))

        # 6. log
        parsed = [parse_suggestions(t, self.k) for t in texts]
        metrics = {
            "grpo/reward": float(torch.nanmean(rewards)),
            "grpo/reward_std": float(torch.nan_to_num(std.float()).mean()),
            "grpo/frac_zero_std": float(torch.isclose(std, torch.zeros_like(std)).float().mean()),
            "grpo/completion_len": float(mask.sum(1).float().mean()),
            "grpo/truncated_rate": 1.0 - sum(ended) / len(ended),
            "grpo/format_rate": sum(p.well_formed for p in parsed) / len(parsed),
            **{f"grpo/rewards/{name}/mean": float(torch.nanmean(s)) for name, s in components.items()},
        }
        if ref is not None:
            metrics["grpo/ref_log_ppl"] = float(mean_nll(ref, mask).mean())
        if loss_value is not None:
            metrics.update({"grpo/loss": loss_value, "grpo/grad_norm": grad_norm,
                            "grpo/clip_ratio": float(stats["clip_ratio/region_mean"]),
                            "grpo/clip_ratio/low_mean": float(stats["clip_ratio/low_mean"]),
                            "grpo/clip_ratio/high_mean": float(stats["clip_ratio/high_mean"])})
            if "kl" in stats:
                metrics["grpo/kl"] = float(stats["kl"])
            if entropy is not None:
                metrics["grpo/entropy"] = entropy
        if scheduler is not None:
            metrics["grpo/lr"] = float(scheduler.get_last_lr()[0])
        self.keep_samples(contexts, texts, total, components)
        self.log_step(metrics, len(batch["messages"]))
        return None

    def keep_samples(self, contexts, texts, total, components) -> None:
        """The first prompt's group every `log_completions_every` batches (completions.jsonl)."""
        every = self.cfg.log_completions_every
        if every and self.batches_seen % every == 0:
            for i in range(self.cfg.group_size):
                self.samples.append({"step": int(self.global_step), "question": contexts[i][0]["content"],
                                     "completion": texts[i], "reward": float(total[i]),
                                     **{name: float(s[i]) for name, s in components.items()}})

    def log_step(self, metrics: dict, batch_size: int) -> None:
        """Close the step: its compute and the running totals, the skipped-step count, then log."""
        metrics.update(self.compute.end_step("grpo"))
        metrics["grpo/nonfinite_steps"] = float(self.nonfinite_total)
        self.batches_seen += 1
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch_size)

    def loss_kwargs(self) -> dict:
        cfg = self.cfg
        return dict(beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                    max_completion_length=cfg.max_completion_length,
                    importance_sampling_level=cfg.importance_sampling_level,
                    use_bias_correction_kl=cfg.use_bias_correction_kl)

    def backward_loss(self, ids, attention, loss_mask, old, ref, advantages, entropy: bool = False):
        """Backward of the whole batch's GRPO loss, micro-batch by micro-batch, with gradients equal to one
        full-batch `grpo_loss` (token: normalised by the batch's token count; sequence / dr_grpo: each
        micro-batch's mean reweighted by its share of sequences). Returns (loss, detached log-probs,
        entropies); log-probs None when a micro-batch's loss was not finite (gradients are then partial)."""
        cfg, n = self.cfg, loss_mask.shape[1]
        kind = LOSS_TYPES[cfg.loss_type]
        # several processes: normalise by the global batch's counts and undo DDP's average over processes
        world = self.trainer.world_size if self._trainer is not None else 1
        n_global = float(all_sum(self._trainer, torch.tensor(float(ids.shape[0]), device=ids.device)))
        n_tokens = all_sum(self._trainer, loss_mask.sum().float())
        total, logps_all, ents = 0.0, [], []
        for start in range(0, ids.shape[0], cfg.micro_batch_size):
            sl = slice(start, start + cfg.micro_batch_size)
            logps, ent = self.completion_logps(self.model, ids[sl], attention[sl], n, entropy)
            loss, _ = grpo_loss(logps, None if old is None else old[sl], None if ref is None else ref[sl],
                                advantages[sl], loss_mask[sl], num_tokens=n_tokens if kind == "token" else None,
                                **self.loss_kwargs())
            if kind != "token":
                loss = loss * (logps.shape[0] / n_global)
            loss = loss * world
            if all_sum(self._trainer, torch.isfinite(loss).float()) < world:  # every process skips together
                return float("nan"), None, None
            if self._trainer is not None:
                self.manual_backward(loss)
            else:  # called outside a Trainer (tests)
                loss.backward()
            total += float(loss.detach()) / world
            logps_all.append(logps.detach())
            if ent is not None:
                ents.append(ent)
        return total, torch.cat(logps_all), (torch.cat(ents) if ents else None)

    def setup(self, stage: str) -> None:
        share_cpu_threads(self.trainer, self.device)

    def on_train_start(self) -> None:
        self.compute.watch_policy(self.model, self.reference_model)
        self.compute.watch_reward(self.reward)
        self.model.train()  # from_pretrained leaves models in eval mode; sampling switches to eval itself
        if self.trainer.world_size > 1:  # spawned processes start from one random state: sample independently
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)

    def _nonfinite(self, what: str) -> None:
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        log.warning("grpo: non-finite %s, step skipped (%d in a row)", what, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row > self.cfg.max_nonfinite_steps:
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} GRPO steps in a row with a non-finite loss or "
                                     "gradients; lower grpo.learning_rate or check the reward components "
                                     "(grpo.max_nonfinite_steps)")

    def configure_optimizers(self):
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        total = self.total_steps or max(int(self.trainer.max_steps), 1)
        warmup = cfg.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if cfg.lr_scheduler == "linear":
                return max(0.0, (total - step) / max(total - warmup, 1))
            return 1.0

        if cfg.lr_scheduler not in ("constant", "linear"):
            raise ValueError(f"grpo.lr_scheduler: unknown {cfg.lr_scheduler!r}; accepted: constant, linear")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights (the LoRA adapters), plus the counters."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["grpo"] = {"nonfinite_total": self.nonfinite_total, "batches_seen": self.batches_seen,
                              "samples": self.samples, "compute": self.compute.totals()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("grpo", {})
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.batches_seen = state.get("batches_seen", 0)
        self.samples = state.get("samples", [])
        self.compute.load(state.get("compute", {}))
