"""The reward-hacking monitor: proxy reward vs. oracle CTR on a fixed probe set during GRPO (SPEC 5.5).

Every `eval_every` optimisation steps (and once before the first), the current policy answers the
probe contexts greedily; the proxy is the mean composite reward the policy is trained on, the oracle
the mean simulated CTR of the same panels. An evaluation *diverges* when the proxy rose by more than
`min_delta` since the previous one while the oracle fell by more than `min_delta`; after `patience`
diverging evaluations in a row the monitor flags reward hacking, logs a warning line and
`grpo/monitor/hacking_flag = 1`. Training goes on (set `stop_on_flag` to stop it).

Checkpoint selection (`select: sampled_clicks`) is what a team with live traffic would do: the same
probe panels are shown to simulated users (`users_per_probe` each) and their *sampled* clicks, never
the oracle, score each evaluation; the trainable weights of the best one are kept and restored when
training ends. The oracle values stay in the logs to show what the choice was worth. A selection is
reported with its power: the kept evaluation's lift over the first one (the weights training started
from) and that lift's standard error, paired over the probe contexts, so a lift inside its noise reads
as what it is.

Settings: `grpo.monitor` (clicks2pref.config.grpo.MonitorConfig). The oracle and the click sampler
arrive as callables from the stage: this module is evaluation code, the only place besides log
sampling allowed to see the simulator; the GRPO module never does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


@dataclass
class DivergenceDetector:
    """Pure bookkeeping: feed (step, proxy, oracle), get True on the evaluation that raises the flag."""

    patience: int = 2
    min_delta: float = 0.0
    history: list = field(default_factory=list)
    streak: int = 0
    flagged_at: list = field(default_factory=list)

    def update(self, step: int, proxy: float, oracle: float) -> bool:
        diverging = False
        if self.history:
            _, p0, o0 = self.history[-1]
            diverging = proxy - p0 > self.min_delta and oracle - o0 < -self.min_delta
        self.history.append((step, float(proxy), float(oracle)))
        self.streak = self.streak + 1 if diverging else 0
        if self.streak >= self.patience:
            self.flagged_at.append(step)
            return True
        return False

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_at)

    def summary(self) -> dict:
        return {"flagged": self.flagged, "flagged_at": list(self.flagged_at),
                "history": [{"step": s, "proxy": p, "oracle_ctr": o} for s, p, o in self.history]}


def paired_lift(kept: Sequence[float], start: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean per-probe difference and its standard error (sample sd / √n; None for one probe): the same probes
    and the same simulated users' random numbers score both, so the pair's shared noise cancels."""
    diff = np.asarray(kept, dtype=float) - np.asarray(start, dtype=float)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    return float(diff.mean()), se


class RewardHackingMonitor(pl.Callback):
    """Runs the probe evaluation from Lightning hooks; the policy module provides `probe(messages, contexts)`
    -> (completions, proxy rewards), the stage provides `oracle(probe_ids, completions)` -> CTR per probe."""

    def __init__(self, probe_messages: Sequence[list[dict]], probe_contexts: Sequence[list[dict]],
                 probe_ids: Sequence, oracle: Callable[[Sequence, Sequence[str]], Sequence[float]],
                 eval_every: int = 4, patience: int = 2, min_delta: float = 0.0, stop_on_flag: bool = False,
                 sampled: Optional[Callable[[Sequence, Sequence[str]], float]] = None):
        self.messages, self.contexts, self.ids = list(probe_messages), list(probe_contexts), list(probe_ids)
        self.oracle, self.eval_every, self.patience, self.stop_on_flag = oracle, eval_every, patience, stop_on_flag
        self.sampled = sampled  # probe ids, completions -> sampled CTR per probe; set = keep the best evaluation's
        self.detector = DivergenceDetector(patience, min_delta)
        self._last_step = None
        self.best: Optional[dict] = None  # {"step", "sampled_ctr", "oracle_ctr", "state"}
        self.selections: list[dict] = []

    def evaluate(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if step == self._last_step or not self.messages:
            return
        self._last_step = step
        completions, proxy = pl_module.probe(self.messages, self.contexts)
        oracle = float(np.mean(self.oracle(self.ids, completions)))
        proxy = float(proxy.mean())
        flag = self.detector.update(step, proxy, oracle)
        metrics = {"grpo/monitor/proxy_reward": proxy, "grpo/monitor/oracle_ctr": oracle,
                   "grpo/monitor/hacking_flag": float(self.detector.flagged)}
        if self.sampled is not None:
            per_probe = [float(v) for v in np.atleast_1d(self.sampled(self.ids, completions))]
            sampled = float(np.mean(per_probe))
            metrics["grpo/monitor/sampled_ctr"] = sampled
            self.selections.append({"step": step, "sampled_ctr": sampled, "oracle_ctr": oracle,
                                    "per_probe": per_probe})
            if self.best is None or sampled > self.best["sampled_ctr"]:
                state = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
                self.best = {"step": step, "sampled_ctr": sampled, "oracle_ctr": oracle, "state": state}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        log.info("monitor step %d: proxy reward %.4f, oracle CTR %.4f", step, proxy, oracle)
        if flag:
            log.warning("REWARD HACKING suspected at step %d: proxy reward up and oracle CTR down for %d evaluations "
                        "in a row (%s)", step, self.detector.streak, ", ".join(
                            f"{s}: {p:.3f}/{o:.3f}" for s, p, o in self.detector.history[-self.patience - 1:]))
            if self.stop_on_flag:
                trainer.should_stop = True

    def on_train_start(self, trainer, pl_module) -> None:
        if self.eval_every > 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimiser steps (num_iterations per batch), so compare distances, not remainders
        due = self._last_step is None or trainer.global_step - self._last_step >= self.eval_every
        if self.eval_every > 0 and due:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.eval_every > 0:
            self.evaluate(trainer, pl_module)
        if self.best is not None and self.best["step"] != self._last_step:
            params = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best["state"].items():
                    params[name].copy_(value)
            chosen = self.selection()
            log.info("monitor: restored the weights of step %d (sampled CTR %.4f, the best of %d evaluations; lift "
                     "over step %d %+.4f ± %s s.e.)", self.best["step"], self.best["sampled_ctr"], len(self.selections),
                     self.selections[0]["step"], chosen["lift"],
                     "n/a" if chosen["lift_se"] is None else f"{chosen['lift_se']:.4f}")

    def selection(self) -> Optional[dict]:
        """The evaluation whose weights the policy keeps, its sampled lift over the first evaluation with the
        lift's standard error (`lift_se`, paired over probes) and the oracle's lift beside it, and every
        evaluation's sampled and oracle CTR."""
        if self.best is None:
            return None
        kept = next(e for e in self.selections if e["step"] == self.best["step"])
        lift, se = paired_lift(kept["per_probe"], self.selections[0]["per_probe"])
        return {"step": self.best["step"], "sampled_ctr": self.best["sampled_ctr"],
                "oracle_ctr": self.best["oracle_ctr"], "lift": lift, "lift_se": se,
                "oracle_lift": self.best["oracle_ctr"] - self.selections[0]["oracle_ctr"],
                "evaluations": list(self.selections)}

    def state_dict(self) -> dict:
        d = self.detector
        return {"history": d.history, "streak": d.streak, "flagged_at": d.flagged_at, "best": self.best,
                "selections": self.selections}

    def load_state_dict(self, state: dict) -> None:
        self.detector.history = [tuple(h) for h in state.get("history", [])]
        self.detector.streak = state.get("streak", 0)
        self.detector.flagged_at = list(state.get("flagged_at", []))
        self.best, self.selections = state.get("best"), list(state.get("selections", []))
