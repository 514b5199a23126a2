"""DPO on the policy: best-vs-worst pairs of its own samples (`optimizer=online_dpo`, TRL's OnlineDPOTrainer)
or pairs of logged panels preferred by their clicks (`optimizer=dpo_clicks`, TRL's DPOTrainer on the logs).

`OnlineDPOModule.training_step` on a batch of prompts:
  1. sample `num_generations` completions per prompt (GRPOModule's sampler);
  2. the composite reward of each (the rule constraint included; reference log-probs give the `ppl` term);
  3. per prompt, the best and the worst completion by reward become a pair (a tie gives none);
  4. one DPO step (`update`).
`ClickDPOModule.training_step` on a batch of logged pairs (`clicks2pref.data.panel_pairs`):
  1. tokenise the chosen and rejected panels as SFT targets are (text + end token);
  2. one DPO step (`update`). No reward model is read; the composite reward only feeds the monitor's proxy.

`update`: sequence log-probs of chosen and rejected under the policy (with gradient, micro-batched by pairs)
and under the reference (LoRA: the same weights with the adapters disabled, as GRPO), the mean of
`objectives.dpo.dpo_loss` (TRL's `beta`, `loss_type`, `label_smoothing`), one clipped AdamW step. Log-probs use
the raw logits (temperature 1), as DPOTrainer's. Without any reference (full fine-tuning with grpo.beta = 0 and
no `ppl` term, so the stage keeps no frozen copy) the reference log-probs are 0: TRL's `reference_free`.

Metrics under `grpo/` (the stage's prefix; TRL's names after it): loss, grad_norm, dpo/rewards/{chosen,
rejected,accuracies,margins}, pairs, and for online_dpo reward, reward_std, rewards/<component>/mean,
completion_len, format_rate; the compute meter's `grpo/compute/*`.
"""
from __future__ import annotations

import torch

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.lit.grpo_module import GRPOModule
from clicks2pref.lit.nonfinite import gradients_finite
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.logprobs import completion_logps, mean_nll, pad_prompt_completion
from clicks2pref.objectives.dpo import LENGTH_NORMALISED, dpo_loss, dpo_stats, sequence_logps


class DPOModule(GRPOModule):
    """GRPOModule's sampler, reward, reference and checkpoints, with a DPO update instead of GRPO's."""

    def __init__(self, model, tokenizer, reward, cfg, opt, k: int = 3, reference_model=None, total_steps=None):
        super().__init__(model, tokenizer, reward, cfg, k=k, reference_model=reference_model, total_steps=total_steps)
        self.opt = opt

    def sequence_logps(self, model, ids, attention, mask):
        """(summed log-prob, length) of each row's completion, at temperature 1, micro-batched."""
        out = [completion_logps(model, ids[s:s + self.cfg.micro_batch_size], attention[s:s + self.cfg.micro_batch_size],
                                mask.shape[1])[0] for s in range(0, ids.shape[0], self.cfg.micro_batch_size)]
        return sequence_logps(torch.cat(out), mask)

    def update(self, prompts: list, chosen: list, rejected: list) -> dict:
        """One DPO optimiser step on pairs (prompt ids, chosen completion ids, rejected completion ids)."""
        n = len(prompts)
        padded = pad_prompt_completion(prompts + prompts, chosen + rejected, self.tokenizer.pad_token_id)
        ids, attention, mask = (t.to(self.device) for t in padded)
        with torch.no_grad():
            if self.has_reference:
                with self.reference_context():
                    ref_model = self.reference_model if self.reference_model is not None else self.model
                    ref, _ = self.sequence_logps(ref_model, ids, attention, mask)
            else:
                ref = torch.zeros(2 * n, device=self.device)
        kw = dict(beta=self.opt.beta, loss_type=self.opt.loss_type, label_smoothing=self.opt.label_smoothing)
        opt, scheduler = self.optimizers(), self.lr_schedulers()
        opt.zero_grad()
        per_chunk = max(1, self.cfg.micro_batch_size // 2)  # a pair's two rows share a micro-batch
        loss_total, chosen_r, rejected_r = 0.0, [], []
        for s in range(0, n, per_chunk):
            rows = list(range(s, min(s + per_chunk, n)))
            rows = rows + [n + i for i in rows]
            logps, lengths = self.sequence_logps(self.model, ids[rows], attention[rows], mask[rows])
            m = len(rows) // 2
            lens = dict(chosen_lengths=lengths[:m], rejected_lengths=lengths[m:]) \
                if self.opt.loss_type in LENGTH_NORMALISED else {}
            losses, cr, rr = dpo_loss(logps[:m], logps[m:], ref[rows[:m]], ref[rows[m:]], **kw, **lens)
            loss = losses.sum() / n
            if not torch.isfinite(loss):
                opt.zero_grad()
                self._nonfinite("loss")
                return {}
            self.manual_backward(loss) if self._trainer is not None else loss.backward()
            loss_total += float(loss.detach())
            chosen_r.append(cr)
            rejected_r.append(rr)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not gradients_finite(params, self._trainer):
            opt.zero_grad()
            self._nonfinite("gradients")
            return {}
        self.nonfinite_in_a_row = 0
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        opt.step()
        if scheduler is not None:
            scheduler.step()
        stats = dpo_stats(torch.cat(chosen_r), torch.cat(rejected_r))
        metrics = {"grpo/loss": loss_total, "grpo/grad_norm": grad_norm,
                   **{f"grpo/dpo/{k}": float(v) for k, v in stats.items()}}
        if scheduler is not None:
            metrics["grpo/lr"] = float(scheduler.get_last_lr()[0])
        return metrics


class OnlineDPOModule(DPOModule):
    def training_step(self, batch, batch_idx):
        G = self.cfg.group_size
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

        # 3. best vs. worst of each prompt's samples
        pairs = best_worst(total, G)
        chosen = [completions[c] for c, _ in pairs]
        rejected = [completions[r] for _, r in pairs]

        # 4. one DPO step on them
        metrics = self.update([prompts[c] for c, _ in pairs], chosen, rejected) if pairs else {}

        # 5. log
        parsed = [parse_suggestions(t, self.k) for t in texts]
        std = total.view(-1, G).std(1) if G > 1 else torch.zeros(1)
        metrics.update({"grpo/reward": float(torch.nanmean(total)), "grpo/reward_std": float(torch.nanmean(std)),
                        "grpo/pairs": float(len(pairs)), "grpo/completion_len": float(mask.sum(1).float().mean()),
                        "grpo/format_rate": sum(p.well_formed for p in parsed) / len(parsed),
                        **{f"grpo/rewards/{name}/mean": float(torch.nanmean(s)) for name, s in components.items()}})
        if ref is not None:
            metrics["grpo/ref_log_ppl"] = float(mean_nll(ref, mask).mean())
        self.keep_samples(contexts, texts, total, components)
        self.log_step(metrics, len(batch["messages"]))
        return None


def best_worst(total: torch.Tensor, group_size: int) -> list[tuple[int, int]]:
    """(best, worst) row of each group of `group_size` rewards; NaN ranks last; a group with no spread gives none."""
    pairs = []
    clean = torch.nan_to_num(total.double(), nan=float("-inf"))
    for g in range(0, len(total), group_size):
        chunk = clean[g:g + group_size]
        best, worst = int(chunk.argmax()), int(chunk.argmin())
        if chunk[best] > chunk[worst]:
            pairs.append((g + best, g + worst))
    return pairs


class ClickDPOModule(DPOModule):
    def training_step(self, batch, batch_idx):
        self.compute.start_step()
        # 1. the logged panels, tokenised as SFT targets are
        prompts = chat_inputs(self.tokenizer, batch["messages"])
        chosen, rejected = self.encode(batch["chosen"]), self.encode(batch["rejected"])
        # 2. one DPO step
        metrics = self.update(prompts, chosen, rejected)
        metrics["grpo/pairs"] = float(len(prompts))
        self.log_step(metrics, len(prompts))
        return None

    def encode(self, texts: list[str]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
