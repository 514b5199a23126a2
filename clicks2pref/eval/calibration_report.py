"""The reward models' calibration report (SPEC 5.6) on the IID and OOD pair splits.

For each model and split: accuracy, ECE (15 equal-width bins, torchmetrics), the reliability diagram
(PNG), accuracy by confidence decile (GaRM confidence Φ(|z|), BTRM σ(|Δ|)) and accuracy by
reference-log-perplexity decile. A pair's reference log-perplexity is the mean of its two
suggestions' values, each the mean token NLL of the suggestion (as the assistant's reply, closing
token included) given its context under the reference policy (`policy.model`).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from functools import partial
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from clicks2pref.data.pairs import context_key
from clicks2pref.eval.calibration import (
    accuracy_by_decile,
    expected_calibration_error,
    reliability_bins,
)
from clicks2pref.models.placement import on_device
from clicks2pref.models.registry import load_causal_lm
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


def reliability_diagram(metrics: dict, path, title: str) -> Path:
    """Accuracy vs. confidence per bin (bars) against the diagonal, pair counts below; a PNG."""
    from matplotlib.figure import Figure  # lazy: matplotlib is a plotting extra

    bins = metrics.get("reliability", [])
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    fig = Figure(figsize=(4.5, 5.5))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers, [b["accuracy"] or 0.0 for b in bins], width=width * 0.9, color="#4c72b0", label="accuracy")
    ax.plot([0.4, 1], [0.4, 1], "--", color="gray", label="perfect calibration")
    ax.scatter([b["confidence"] for b in bins if b["count"]], [b["accuracy"] for b in bins if b["count"]],
               color="#dd8452", zorder=3, s=14, label="bin (mean confidence, accuracy)")
    ax.set(ylim=(0, 1), ylabel="accuracy",
           title=f"{title}\nacc {metrics.get('accuracy', float('nan')):.3f}  ECE {metrics.get('ece', float('nan')):.3f}"
                 f"  n={metrics.get('n_pairs', 0)}")
    ax.legend(loc="upper left", fontsize=7)
    ax_n.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="gray")
    ax_n.set(xlim=(0.4, 1), xlabel="confidence (of the side the model picks)", ylabel="pairs")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_report(report: dict) -> str:
    """Summary table (model × split) and the accuracy-by-confidence / by-perplexity decile tables."""
    kinds = report["kinds"]
    lines = ["## Reward models: accuracy and calibration", "",
             "| model | split | pairs | accuracy | ECE | mean confidence | σ mean | oracle ρ | oracle within-panel "
             "| train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, res in kinds.items():
        for split, m in res["splits"].items():
            lines.append(f"| {kind} | {split} | {m['n_pairs']} | {_f(m.get('accuracy'))} | {_f(m.get('ece'), 4)} | "
                         f"{_f(m.get('mean_confidence'))} | {_f(m.get('sigma_mean'))} | "
                         f"{_f(m.get('oracle_spearman'))} | {_f(m.get('oracle_within_panel'))} | "
                         f"{res.get('train_seconds', 0):.0f} |")
    for kind, res in kinds.items():
        if res.get("examination"):
            lines.append(f"\n{kind}: learned examination e_k = "
                         + ", ".join(f"{e:.3f}" for e in res["examination"]) + " (e_1 fixed)")
    for table, score in (("by_confidence", "confidence"), ("by_log_ppl", "log_ppl")):
        columns = [(kind, split) for kind, res in kinds.items() for split, m in res["splits"].items() if table in m]
        if not columns:
            continue
        title = "confidence" if score == "confidence" else "reference log-perplexity"
        lines += ["", f"### Accuracy by {title} decile (mean {score} → accuracy, lowest decile first)", "",
                  "| decile | " + " | ".join(f"{k} {s}" for k, s in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        depth = max(len(kinds[k]["splits"][s][table]) for k, s in columns)
        for i in range(depth):
            cells = []
            for k, s in columns:
                rows = kinds[k]["splits"][s][table]
                cells.append(f"{_f(rows[i][score], 2)} → {_f(rows[i]['accuracy'])}" if i < len(rows) else "")
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    if report.get("notes"):
        lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder) -> list[Path]:
    """calibration.json, calibration.md and reliability_<kind>_<split>.png into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "calibration.json", folder / "calibration.md"]
    written[0].write_text(json.dumps(report, indent=2))
    written[1].write_text(markdown_report(report))
    for kind, res in report["kinds"].items():
        for split, m in res["splits"].items():
            if m.get("n_pairs"):
                written.append(reliability_diagram(m, folder / f"reliability_{kind}_{split}.png", f"{kind} – {split}"))
    return written


# --- from a run's config -------------------------------------------------------------------------


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
