"""GRPO's monitor and checkpoint selection without an oracle (`simulator=none`).

The probe set is held-out logged conversations (the `val` slice of `clicks2pref.data.log_splits`: never a
GRPO prompt, never an evaluation conversation). At every evaluation the policy answers them greedily; the
proxy is the reward it trains on, and the check is the click model's probability of a click on those
panels (`clicks2pref.eval.offline.ClickModelCTR`: learned examination × the reward model's attraction,
model-based). The divergence flag is the oracle monitor's (proxy up while the estimate falls), and the
kept weights are those of the evaluation with the highest estimated CTR, the proxy breaking ties. The
estimate is read from the same reward models the proxy uses, so it cannot catch hacking of those models
themselves; it does catch the rule, perplexity and diversity terms pulling against clicks, and it is
measured on conversations GRPO never trained on.
"""
from __future__ import annotations

import logging
import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.eval.monitor import RewardHackingMonitor
from clicks2pref.eval.offline import BASIS, ClickModelCTR

log = logging.getLogger(__name__)


class OfflineMonitor(RewardHackingMonitor):
    """`RewardHackingMonitor` whose check value is the click model's estimated CTR of the probe panels."""

    def __init__(self, probe_messages: Sequence[list[dict]], probe_contexts: Sequence[list[dict]],
                 estimate: Callable[[Sequence[list[dict]], Sequence[str]], np.ndarray], eval_every: int = 4,
                 patience: int = 2, min_delta: float = 0.0, stop_on_flag: bool = False, select: bool = True):
        super().__init__(probe_messages, probe_contexts, list(range(len(probe_contexts))),
                         lambda ids, completions: estimate(self.contexts, completions), eval_every, patience,
                         min_delta, stop_on_flag)
        self.select = select

    def evaluate(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if step == self._last_step or not self.messages:
            return
        self._last_step = step
        completions, proxy = pl_module.probe(self.messages, self.contexts)
        estimated, proxy = float(np.mean(self.oracle(self.ids, completions))), float(proxy.mean())
        flag = self.detector.update(step, proxy, estimated)
        self.selections.append({"step": step, "estimated_ctr": estimated, "proxy_reward": proxy})
        if self.select and (self.best is None or (estimated, proxy) > (self.best["estimated_ctr"],
                                                                        self.best["proxy_reward"])):
            state = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
            self.best = {"step": step, "estimated_ctr": estimated, "proxy_reward": proxy, "state": state}
        for lg in trainer.loggers:
            lg.log_metrics({"grpo/monitor/proxy_reward": proxy, "grpo/monitor/estimated_ctr": estimated,
                            "grpo/monitor/hacking_flag": float(self.detector.flagged)}, step=step)
        log.info("monitor step %d: proxy reward %.4f, estimated CTR %.4f (%s, held-out logged conversations)",
                 step, proxy, estimated, BASIS)
        if flag:
            log.warning("REWARD HACKING suspected at step %d: proxy reward up and the click model's estimated CTR "
                        "down for %d evaluations in a row", step, self.detector.streak)
            if self.stop_on_flag:
                trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.eval_every > 0:
            self.evaluate(trainer, pl_module)
        if self.best is not None and self.best["step"] != self._last_step:
            params = dict(pl_module.named_parameters())
            with torch.no_grad():
                for name, value in self.best["state"].items():
                    params[name].copy_(value)
            log.info("monitor: restored the weights of step %d (estimated CTR %.4f, %s; the best of %d evaluations)",
                     self.best["step"], self.best["estimated_ctr"], BASIS, len(self.selections))

    def selection(self) -> Optional[dict]:
        if self.best is None:
            return None
        return {"step": self.best["step"], "estimated_ctr": self.best["estimated_ctr"],
                "proxy_reward": self.best["proxy_reward"], "basis": BASIS, "evaluations": list(self.selections)}

    def summary(self) -> dict:
        """The detector's summary with the check value named for what it is."""
        s = self.detector.summary()
        s["history"] = [{"step": h["step"], "proxy": h["proxy"], "estimated_ctr": h["oracle_ctr"]}
                        for h in s["history"]]
        return {**s, "basis": BASIS}


def offline_monitor(monitor_cfg, estimator: ClickModelCTR, conversations: Sequence[list[dict]], template,
                    seed: int) -> OfflineMonitor:
    """The monitor on up to `monitor_cfg.probe_contexts` of `conversations` (held-out, `val`), keeping the
    best-estimated weights unless `monitor_cfg.select` is `last`."""
    m = monitor_cfg
    probe = list(conversations)
    random.Random(seed).shuffle(probe)
    probe = probe[:m.probe_contexts]
    if not probe:
        log.warning("grpo: no held-out logged conversation to monitor on; the monitor is off and the last weights "
                    "are kept")

    def estimate(contexts, completions):
        panels = [parse_suggestions(c, estimator.k).suggestions for c in completions]
        return estimator.panel_ctr(list(contexts), panels)["ctr"]

    return OfflineMonitor([build_messages(template, c) for c in probe], probe, estimate,
                          m.eval_every if probe else 0, m.patience, m.min_delta, m.stop_on_flag,
                          select=m.select != "last")
