"""The reward-hacking monitor flags a scripted proxy-up / oracle-down trace and stays quiet on an aligned one."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clicks2pref.data.parsing import format_suggestions
from clicks2pref.eval.gsb import gsb
from clicks2pref.eval.monitor import DivergenceDetector, RewardHackingMonitor
from clicks2pref.eval.reference_panels import canned_panel, ideal_panel
from tests.conftest import compose_config


def run(trace, patience=2, min_delta=0.0):
    d = DivergenceDetector(patience, min_delta)
    return [d.update(step, p, o) for step, (p, o) in enumerate(trace)], d


def test_flags_proxy_up_oracle_down_after_patience():
    trace = [(0.1, 0.30), (0.2, 0.32), (0.3, 0.29), (0.5, 0.25), (0.7, 0.20)]
    flags, d = run(trace, patience=2)
    assert flags == [False, False, False, True, True]
    assert d.flagged and d.flagged_at == [3, 4]


def test_quiet_on_aligned_and_on_interrupted_traces():
    aligned = [(0.1, 0.30), (0.2, 0.31), (0.3, 0.33), (0.4, 0.34), (0.5, 0.36)]
    assert not any(run(aligned)[0])
    both_down = [(0.5, 0.30), (0.4, 0.28), (0.3, 0.25)]
    assert not any(run(both_down)[0])
    interrupted = [(0.1, 0.3), (0.2, 0.2), (0.2, 0.3), (0.3, 0.2), (0.3, 0.25)]  # never two in a row
    assert not any(run(interrupted)[0])
    small = [(0.1, 0.30), (0.11, 0.299), (0.12, 0.298)]
    assert not any(run(small, min_delta=0.005)[0])


class FakePolicy:
    """Scripted policy: each probe evaluation returns the next (proxy, oracle) pair."""

    def __init__(self, trace):
        self.trace, self.i = trace, 0

    def probe(self, messages, contexts):
        p, o = self.trace[min(self.i, len(self.trace) - 1)]
        self.i += 1
        return [f"o={o}"] * len(messages), torch.full((len(messages),), p)


def test_callback_logs_and_warns(caplog):
    trace = [(0.1, 0.30), (0.3, 0.25), (0.5, 0.20)]
    policy = FakePolicy(trace)
    logged = []
    trainer = SimpleNamespace(global_step=0, should_stop=False,
                              loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))])
    oracle = lambda ids, completions: [float(c.split("=")[1]) for c in completions]  # noqa: E731
    mon = RewardHackingMonitor([[{"role": "user", "content": "q"}]] * 2, [[]] * 2, [("t", "f")] * 2, oracle,
                               eval_every=2, patience=2, stop_on_flag=True)
    with caplog.at_level(logging.WARNING):
        mon.on_train_start(trainer, policy)
        for step in (1, 2, 3, 4):
            trainer.global_step = step
            mon.on_train_batch_end(trainer, policy, None, None, step)
    assert [s for s, _ in logged] == [0, 2, 4]
    assert logged[-1][1]["grpo/monitor/hacking_flag"] == 1.0 and logged[0][1]["grpo/monitor/hacking_flag"] == 0.0
    assert "REWARD HACKING" in caplog.text and trainer.should_stop


def test_gsb():
    g = gsb([0.5, 0.4, 0.3, 0.31], [0.4, 0.5, 0.3, 0.3], margin=0.02)
    assert (g.good, g.same, g.bad) == (1, 2, 1) and g.score == 0.0
    assert gsb([0.9, 0.9], [0.1, 0.1]).score == 100.0


class FakeWeights(torch.nn.Module, FakePolicy):
    """A scripted policy with one trainable weight the training loop changes between evaluations."""

    def __init__(self, trace):
        torch.nn.Module.__init__(self)
        FakePolicy.__init__(self, trace)
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_selection_keeps_the_weights_of_the_evaluation_with_the_most_sampled_clicks():
    """Sampled CTR peaks at the second evaluation (step 2) while the oracle peaks at step 4: the monitor
    restores step 2's weights, chosen on sampled clicks alone, and reports both values."""
    trace = [(0.1, 0.30), (0.2, 0.20), (0.3, 0.40)]
    sampled_by_oracle = {0.30: 0.25, 0.20: 0.35, 0.40: 0.10}
    policy = FakeWeights(trace)
    trainer = SimpleNamespace(global_step=0, should_stop=False, loggers=[])
    oracle = lambda ids, completions: [float(c.split("=")[1]) for c in completions]  # noqa: E731
    sampled = lambda ids, completions: sampled_by_oracle[float(completions[0].split("=")[1])]  # noqa: E731
    mon = RewardHackingMonitor([[{"role": "user", "content": "q"}]], [[]], [("t", "f")], oracle, eval_every=2,
                               sampled=sampled)
    mon.on_train_start(trainer, policy)
    for step in (1, 2, 3, 4):
        trainer.global_step = step
        with torch.no_grad():
            policy.w.fill_(float(step))  # the optimiser's update of this step
        mon.on_train_batch_end(trainer, policy, None, None, step)
    mon.on_train_end(trainer, policy)
    assert policy.w.item() == 2.0
    chosen = mon.selection()
    assert (chosen["step"], chosen["sampled_ctr"], chosen["oracle_ctr"]) == (2, 0.35, 0.20)
    assert [e["step"] for e in chosen["evaluations"]] == [0, 2, 4]


def test_a_selection_reports_its_lift_over_the_start_with_the_paired_standard_error():
    """Per-probe sampled CTRs 0.1/0.2/0.3 at step 0 and 0.2/0.2/0.5 at step 2: lift mean(0.1, 0, 0.2) = 0.1, its
    standard error sd(0.1, 0, 0.2) / √3 = 0.1 / √3; the oracle's lift beside it."""
    policy = FakeWeights([(0.1, 0.30), (0.2, 0.40)])
    trainer = SimpleNamespace(global_step=0, should_stop=False, loggers=[])
    per_probe = {0.30: [0.1, 0.2, 0.3], 0.40: [0.2, 0.2, 0.5]}
    oracle = lambda ids, completions: [float(c.split("=")[1]) for c in completions]  # noqa: E731
    sampled = lambda ids, completions: per_probe[float(completions[0].split("=")[1])]  # noqa: E731
    mon = RewardHackingMonitor([[{"role": "user", "content": "q"}]] * 3, [[]] * 3, [("t", "f")] * 3, oracle,
                               eval_every=2, sampled=sampled)
    mon.on_train_start(trainer, policy)
    trainer.global_step = 2
    mon.on_train_batch_end(trainer, policy, None, None, 2)
    chosen = mon.selection()
    assert chosen["step"] == 2 and chosen["lift"] == pytest.approx(0.1)
    assert chosen["lift_se"] == pytest.approx(0.1 / 3 ** 0.5) and chosen["oracle_lift"] == pytest.approx(0.1)
    assert chosen["evaluations"][1]["per_probe"] == [0.2, 0.2, 0.5]


class ScriptedPanels(torch.nn.Module):
    """A policy whose probe answers are given panels, one list of panels per evaluation."""

    def __init__(self, evaluations):
        super().__init__()
        self.evaluations, self.i = evaluations, 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def probe(self, messages, contexts):
        panels = self.evaluations[min(self.i, len(self.evaluations) - 1)]
        self.i += 1
        return [format_suggestions(p) for p in panels], torch.zeros(len(panels))


def known_gap(sim, ids, canned, gap):
    """The canned panel of each probe, and the same panels with the last question replaced by the ideal panel's
    best on as few probes as it takes for the oracle CTR to rise by `gap` on average: two checkpoints a known
    distance apart, at the click level of the panels a policy writes."""
    k = len(sim.cfg.examination)
    worse = [canned_panel(sim.world[t].title, canned) for t, _ in ids]
    base = sim.oracle_ctr_many([(t, f, p) for (t, f), p in zip(ids, worse)])
    better = [list(p) for p in worse]
    for i, (t, f) in enumerate(ids):
        better[i] = worse[i][:-1] + ideal_panel(sim, t, f, k)[:1]
        lift = float(np.mean(sim.oracle_ctr_many([(t, f, p) for (t, f), p in zip(ids, better)]) - base))
        if lift >= gap:
            return worse, better, lift
    raise AssertionError(f"no pair of panels {gap} apart on these probes")


@pytest.mark.parametrize("gap", [0.01])
def test_selection_keeps_the_truly_better_of_two_checkpoints_a_known_gap_apart(minilm_simulator, tmp_path, gap):
    """The default monitor (its probe contexts, simulated users and click sampler; never the oracle) shown two
    checkpoints whose probe panels differ by `gap` oracle CTR keeps the better one for at least 19 of 20 seeds,
    whichever it saw first, and reports a lift whose standard error is below half the gap."""
    from clicks2pref.stages.grpo import build_monitor

    cfg = compose_config([], tmp_path)
    sim = minilm_simulator
    kept_better, errors = 0, []
    for seed in range(20):
        cfg.seed = seed
        mon = build_monitor(cfg, sim, next(iter(cfg.prompt.values())))  # the template only words the prompts
        worse, better, lift = known_gap(sim, mon.ids, cfg.eval.reference_panels.canned, gap)
        order = [worse, better] if seed % 2 else [better, worse]
        policy = ScriptedPanels(order)
        trainer = SimpleNamespace(global_step=0, should_stop=False, loggers=[])
        mon.on_train_start(trainer, policy)
        trainer.global_step = mon.eval_every
        mon.on_train_batch_end(trainer, policy, None, None, mon.eval_every)
        chosen = mon.selection()
        kept_better += (chosen["step"] == mon.eval_every) == (order[1] is better)
        errors.append(chosen["lift_se"])
    assert kept_better >= 19, f"kept the better checkpoint for {kept_better} of 20 seeds at a gap of {gap}"
    assert np.mean(errors) < gap / 2, f"mean standard error of the selection's lift {np.mean(errors):.4f}"
