"""The GRPO training figure: reward, KL and entropy per optimiser step, and the reward-hacking monitor's
proxy reward against the oracle CTR on its probe contexts (the one figure that shows reward hacking:
the proxy climbs while the oracle falls).

It reads what a GRPO run leaves in its run folder: `grpo.json` (the monitor's history, always there)
and, with `logger=csv`, `csv/metrics.csv` (`grpo/reward`, `grpo/kl`, `grpo/entropy` per batch). Lightning
logs a batch's metrics at the batch's index while the monitor logs at the optimiser step, so batch b is
drawn at step b·μ (`grpo.num_iterations` from the run's `.hydra/config.yaml`): the step of the policy
that sampled it. A sweep folder (`logs/grpo/multiruns/<time>`) gives one line per job on the same axes.
The grpo stage writes the figure as `training.png` in its run folder; `notebooks/training.ipynb` shows it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES = {"reward": "grpo/reward", "kl": "grpo/kl", "entropy": "grpo/entropy"}  # series -> metrics.csv column
MONITOR = {"proxy": "grpo/monitor/proxy_reward", "oracle_ctr": "grpo/monitor/oracle_ctr"}  # the csv fallback
TITLES = {"reward": "reward (mean composite)", "kl": "KL to the reference (k3)", "entropy": "entropy (nats/token)"}


def load_history(folder) -> dict:
    """A GRPO run folder's curves: {"label", "reward", "kl", "entropy", "proxy", "oracle_ctr": [(step, value)],
    "flagged_at": [step]}; a series the folder does not hold is empty."""
    folder = Path(folder)
    history = {"label": folder.name, **{name: [] for name in (*CURVES, *MONITOR)}, "flagged_at": []}
    if (folder / "grpo.json").exists():
        result = json.loads((folder / "grpo.json").read_text())
        history["label"] = result.get("rewards", folder.name)
        monitor = result.get("monitor", {})
        history["proxy"] = [(h["step"], h["proxy"]) for h in monitor.get("history", [])]
        history["oracle_ctr"] = [(h["step"], h["oracle_ctr"]) for h in monitor.get("history", [])]
        history["flagged_at"] = list(monitor.get("flagged_at", []))
    metrics = folder / "csv" / "metrics.csv"
    if metrics.exists():
        mu = num_iterations(folder)
        with open(metrics, newline="") as fh:
            rows = list(csv.DictReader(fh))
        for name, column in CURVES.items():
            history[name] = [(int(r["step"]) * mu, float(r[column])) for r in rows if r.get(column)]
        for name, column in MONITOR.items():  # a run killed before grpo.json was written
            history[name] = history[name] or [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
    return history


def num_iterations(folder: Path) -> int:
    """μ, optimiser steps per batch of samples, from the run's Hydra config (1 when there is none)."""
    config = folder / ".hydra" / "config.yaml"
    if not config.exists():
        return 1
    return int(((yaml.safe_load(config.read_text()) or {}).get("grpo") or {}).get("num_iterations") or 1)


def has_data(history: dict) -> bool:
    return any(history[name] for name in (*CURVES, *MONITOR))


def sweep_histories(sweep) -> list[dict]:
    """One history per job folder (`0/`, `1/`, ...) of a multirun folder that holds GRPO curves, labelled
    `<job> <rewards preset>`."""
    jobs = sorted((p for p in Path(sweep).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    histories = []
    for job in jobs:
        history = load_history(job)
        if has_data(history):
            history["label"] = f"{job.name} {history['label']}" if history["label"] != job.name else job.name
            histories.append(history)
    return histories


def training_figure(histories: Sequence[dict], title: str = "") -> Figure:
    """Four panels over optimiser steps, one colour per run: reward, KL, entropy, and the monitor's proxy
    reward (solid, left axis) against the oracle CTR (dashed, right axis), the steps that raised the
    reward-hacking flag marked in red. Returns the Figure (a notebook shows it inline; `.savefig` writes it)."""
    from matplotlib.figure import Figure  # lazy: matplotlib is a plotting extra

    fig = Figure(figsize=(10, 6.2), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    colors = [f"C{i % 10}" for i in range(len(histories))]
    for ax, name in zip(axes, CURVES):
        for h, color in zip(histories, colors):
            if h[name]:
                ax.plot(*zip(*h[name]), "o-" if len(h[name]) < 30 else "-", color=color, ms=3, lw=1.2,
                        label=h["label"])
        ax.set_title(TITLES[name], fontsize=9)
        if not any(h[name] for h in histories):
            ax.text(0.5, 0.5, f"no {CURVES[name]} logged\n(csv/metrics.csv, logger=csv)", ha="center",
                    va="center", color="gray", fontsize=8, transform=ax.transAxes)
    proxy_ax = axes[3]
    oracle_ax = proxy_ax.twinx()
    for h, color in zip(histories, colors):
        if h["proxy"]:
            proxy_ax.plot(*zip(*h["proxy"]), "o-", color=color, ms=3, lw=1.2, label=h["label"])
        if h["oracle_ctr"]:
            oracle_ax.plot(*zip(*h["oracle_ctr"]), "s--", color=color, ms=3, lw=1.2)
        for step in h["flagged_at"]:
            proxy_ax.axvline(step, color="red", ls=":", lw=1)
            proxy_ax.text(step, 0.98, " flag", color="red", fontsize=7, va="top",
                          transform=proxy_ax.get_xaxis_transform())
    proxy_ax.set_title("reward-hacking monitor on the probe contexts", fontsize=9)
    proxy_ax.set_ylabel("proxy reward (solid)")
    oracle_ax.set_ylabel("oracle CTR (dashed)")
    for ax in (*axes, oracle_ax):
        ax.ticklabel_format(axis="y", useOffset=False)
    axes[2].xaxis.get_major_locator().set_params(integer=True)  # shared by the four panels
    for ax in axes[2:]:
        ax.set_xlabel("optimiser step")
    if len(histories) > 1:  # one entry per run, below the panels rather than over a curve
        runs = {label: line for ax in axes for line, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(runs.values(), runs.keys(), loc="outside lower center", ncols=min(len(runs), 4), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def write_training_plot(folder, path=None, dpi: int = 100) -> Optional[Path]:
    """`training.png` (or `path`) of a GRPO run folder; None when the folder holds no curves."""
    history = load_history(folder)
    if not has_data(history):
        return None
    path = Path(path) if path is not None else Path(folder) / "training.png"
    training_figure([history], title=f"GRPO ({history['label']})").savefig(path, dpi=dpi)
    return path
