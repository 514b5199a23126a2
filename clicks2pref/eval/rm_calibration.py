"""The reward models' calibration (SPEC 5.6) on the IID and OOD pair splits: the numbers, not their rendering.

For each model and split: accuracy, ECE (15 equal-width bins, torchmetrics), reliability bins, accuracy by
confidence decile (GaRM confidence Φ(|z|), BTRM σ(|Δ|)) and accuracy by reference-log-perplexity decile. A pair's
reference log-perplexity is the mean of its two suggestions' values, each the mean token NLL of the suggestion (as
the assistant's reply, closing token included) given its context under the reference policy (`policy.model`).
`clicks2pref.eval.calibration_report` renders the result (tables, reliability diagrams).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import Tensor

from clicks2pref.data.io import atomic_write_text, expand_sources, load_impressions, read_cached_json, read_jsonl
from clicks2pref.data.pairs import build_pairs, context_key
from clicks2pref.fingerprint import fingerprint
from clicks2pref.eval.calibration import (
    accuracy_by_decile,
    expected_calibration_error,
    reliability_bins,
)
from clicks2pref.models.placement import on_device
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.models.reward_heads import load_reward_model
from clicks2pref.models.shared_prefix import rm_outputs

log = logging.getLogger(__name__)

def item_key(context: list[dict], text: str) -> tuple[str, str]:
    return context_key(context), text


def unique_items(pairs: Sequence[dict]) -> dict[tuple[str, str], tuple[list[dict], str]]:
    """Every distinct (context, suggestion) of the pairs, keyed by `item_key`."""
    items = {}
    for p in pairs:
        for text in (p["chosen"], p["rejected"]):
            items.setdefault(item_key(p["context"], text), (p["context"], text))
    return items


def pair_predictions(model, pairs: Sequence[dict], batch_size: int = 32, score: Optional[Callable] = None
                     ) -> dict[str, Tensor]:
    """Per pair: `confidence` (for the side the model picks), `correct`, `p_chosen`, and for GaRM
    `sigma` (mean of the two sides). Each distinct suggestion is scored once, each conversation once per batch;
    `score` (contexts, suggestions) -> head outputs replaces that scoring (e.g. `cached_outputs`)."""
    items = unique_items(pairs)
    keys = list(items)
    score = score or partial(rm_outputs, model, batch_size=batch_size)
    out = score([items[k][0] for k in keys], [items[k][1] for k in keys])
    index = {k: i for i, k in enumerate(keys)}
    c = torch.tensor([index[item_key(p["context"], p["chosen"])] for p in pairs], dtype=torch.long)
    r = torch.tensor([index[item_key(p["context"], p["rejected"])] for p in pairs], dtype=torch.long)
    out = {k: v.double() for k, v in out.items()}
    margin = model.head.pair_margin(out, c, r)  # the head's z (GaRM) or r_c − r_r (BTRM)
    conf, correct = model.head.link(margin.abs()), margin > 0
    result = {"confidence": conf, "correct": correct, "p_chosen": torch.where(correct, conf, 1 - conf)}
    if "sigma" in out:
        result["sigma"] = (out["sigma"][c] + out["sigma"][r]) / 2
    return result


@torch.no_grad()
def reference_log_ppl(model, tokenizer, items: Sequence[tuple[list[dict], str]], batch_size: int = 16,
                      max_length: int = 256) -> Tensor:
    """Mean token NLL of each suggestion given its context (chat template; context cut from the left)."""
    seqs = []
    for context, text in items:
        messages = [{"role": t["role"], "content": t["content"]} for t in context]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}],
                                             tokenize=False).rstrip()
        target_text = full[len(prompt):] if full.startswith(prompt) else text
        target = tokenizer(target_text, add_special_tokens=False)["input_ids"][: max_length - 1]
        context_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        context_ids = context_ids[max(len(context_ids) - (max_length - len(target)), 0):]
        seqs.append((context_ids, target))
    order = sorted(range(len(seqs)), key=lambda i: sum(map(len, seqs[i])))
    result = torch.empty(len(seqs), dtype=torch.float64)
    was_training = model.training
    model.eval()
    model = on_device(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        rows = [seqs[i][0] + seqs[i][1] for i in batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        target = torch.zeros_like(nll)
        for j, i in enumerate(batch):
            n_ctx, n_tgt = len(seqs[i][0]), len(seqs[i][1])
            target[j, n_ctx - 1:n_ctx - 1 + n_tgt] = 1  # logits at t predict token t + 1
        per_item = (nll * target).sum(1) / target.sum(1).clamp(min=1)
        result[torch.tensor(batch)] = per_item.double().cpu()
    model.train(was_training)
    return result


def pair_log_ppl(pairs: Sequence[dict], item_ppl: dict[tuple[str, str], float]) -> Tensor:
    """Mean of the chosen and rejected suggestions' reference log-perplexities, per pair."""
    return torch.tensor([(item_ppl[item_key(p["context"], p["chosen"])]
                          + item_ppl[item_key(p["context"], p["rejected"])])
                         / 2 for p in pairs], dtype=torch.float64)


def _rows(table: dict[str, Tensor], score_name: str) -> list[dict]:
    return [{"group": i + 1, score_name: _num(s), "accuracy": _num(a), "count": int(n)}
            for i, (s, a, n) in enumerate(zip(table["score"], table["accuracy"], table["count"]))]


def _num(x) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def calibration_metrics(pred: dict[str, Tensor], n_bins: int = 15, n_deciles: int = 10,
                        log_ppl: Optional[Tensor] = None) -> dict:
    """JSON-ready metrics of one model on one split (see the module docstring)."""
    conf, correct = pred["confidence"], pred["correct"]
    n = len(conf)
    if n == 0:
        return {"n_pairs": 0}
    bins = reliability_bins(conf, correct, n_bins)
    metrics = {
        "n_pairs": n,
        "accuracy": correct.double().mean().item(),
        "ece": expected_calibration_error(conf, correct, n_bins).item(),
        "mean_confidence": conf.double().mean().item(),
        "reliability": [{"lower": float(lo), "upper": float(hi), "confidence": _num(c), "accuracy": _num(a),
                         "count": int(k)} for lo, hi, c, a, k in zip(bins["lower"], bins["upper"], bins["confidence"],
                                                                       bins["accuracy"], bins["count"])],
        "by_confidence": _rows(accuracy_by_decile(conf, correct, min(n_deciles, n)), "confidence"),
    }
    if "sigma" in pred:
        metrics["sigma_mean"] = pred["sigma"].double().mean().item()
    if log_ppl is not None:
        metrics["by_log_ppl"] = _rows(accuracy_by_decile(log_ppl, correct, min(n_deciles, n)), "log_ppl")
    return metrics


def reference_ppl(cfg, splits: dict[str, list[dict]]) -> dict:
    """Reference log-perplexity of every suggestion in the test splits, keyed by item."""
    items = {}
    for split in ("iid", "ood"):
        items.update(unique_items(splits.get(split, [])))
    if not items:
        return {}
    start = time.time()
    model, tok = load_causal_lm(cfg.policy.model, cfg.paths.model_cache, seed=cfg.seed)
    keys = list(items)
    cal = cfg.reward_model.calibration
    values = reference_log_ppl(model, tok, [items[k] for k in keys], cal.batch_size, cal.max_length)
    log.info("rm: reference log-perplexity of %d suggestions under %s (%.0fs)", len(keys), cfg.policy.model.name,
             time.time() - start)
    return {k: float(v) for k, v in zip(keys, values)}


def calibrate(cfg, model, splits: dict, ppl: dict, score: Optional[Callable] = None) -> dict:
    """split -> accuracy, ECE, reliability bins and decile tables of one reward model (SPEC 5.6)."""
    cal = cfg.reward_model.calibration
    out = {}
    for split in ("val", "iid", "ood"):
        if split not in splits:
            continue
        if not splits[split]:  # e.g. OOD logs in which nobody clicked below the top position
            out[split] = {"n_pairs": 0}
            continue
        pred = pair_predictions(model, splits[split], cal.batch_size, score)
        log_ppl = pair_log_ppl(splits[split], ppl) if ppl and split != "val" else None
        out[split] = calibration_metrics(pred, cal.n_bins, cal.n_deciles, log_ppl)
    return out


def calibration_section(cfg, folder: Path, trained: dict, ood_logs: Optional[str]) -> dict:
    """The trained reward models' (`folder`, the rm artifact; `trained`, its rm.json) calibration report on the
    IID test week and, when there are logs from another policy (`data.ood_logs`, else the GRPO policy's week of
    RL logs), on that OOD split; cached by the models' key, the OOD files' bytes and the report settings."""
    source = cfg.data.ood_logs or ood_logs
    digest = hashlib.sha256(f"{trained['key']}|{json.dumps(OmegaConf.to_container(cfg.reward_model.calibration))}|"
                            f"{cfg.policy.model.name}".encode())
    for path in expand_sources(source) if source else []:
        digest.update(path.read_bytes())
    digest.update(fingerprint(("clicks2pref.eval.rm_calibration",)).encode())  # the code that computes it
    cached = Path(cfg.paths.artifacts_dir) / "eval" / f"calibration-{digest.hexdigest()[:12]}.json"
    if cfg.cache and (report := read_cached_json(cached)) is not None:
        return report
    splits = {"iid": read_jsonl(folder / "pairs" / "iid.jsonl")}
    pcfg = cfg.reward_model.pairs
    iid = f"week(s) {list(pcfg.test_weeks)}" if pcfg.test_weeks else "the last week (or held-out conversations)"
    notes = [f"IID: {iid} of the training logs ({pcfg.position_filter} pairs)"]
    if source:
        ood = build_pairs(load_impressions(source, cfg.data.on_invalid), pcfg.position_filter)
        splits["ood"] = [p for p in ood if pcfg.ood_weeks is None or p["week"] in set(pcfg.ood_weeks)]
        notes.append(f"OOD: {source} (policies {sorted({p.get('policy', '?') for p in splits['ood']}) or '-'})")
    else:
        notes.append("no OOD split: no data.ood_logs and no RL logs from the GRPO stage")
    ppl = reference_ppl(cfg, splits) if cfg.reward_model.calibration.reference_ppl else {}
    report = {"key": trained["key"], "pairs": {k: len(v) for k, v in splits.items()}, "notes": notes, "kinds": {}}
    for kind in cfg.reward_model.kinds:
        model = load_reward_model(folder / kind, cfg.paths.model_cache,
                                  trust_remote_code=cfg.reward_model.backbone.trust_remote_code)
        report["kinds"][kind] = {"train_seconds": trained["train_seconds"][kind],
                                 "splits": calibrate(cfg, model, splits, ppl)}
    atomic_write_text(json.dumps(report), cached)
    return report
