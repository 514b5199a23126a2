"""Policies compared on held-out logged conversations without an oracle: the offline table and the A/B plan.

Every policy answers the same held-out conversations (`clicks2pref.data.log_splits`, the `test` slice)
`samples_per_context` times; each panel's CTR is estimated by the click model the reward models learned
(`clicks2pref.eval.offline.ClickModelCTR`, the primary estimator), and, when a second reward model was
trained, by that one too as a cross-check (`cross_<kind>`). The anchor is the logged policy on the same
conversations: its estimated CTR (its own logged panels through the same click model) and its observed
CTR. Lifts are paired over conversations against the anchor's *estimated* CTR, so the estimator's level
cancels; the A/B plan applies them to the *observed* CTR. Best-of-n picks by a reward among the same
samples: when the reward is the estimator's own model, its estimated gain is partly circular, which is
why the cross-check column is there. Every row says `basis: model-based`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.eval.ab_plan import markdown as ab_markdown
from clicks2pref.eval.ab_plan import plan as ab_plan
from clicks2pref.eval.best_of import pick_best
from clicks2pref.eval.ctr import bootstrap_mean
from clicks2pref.eval.offline import BASIS, ClickModelCTR, logged_anchor, paired_lift, row, sample_ctr
from clicks2pref.models.generate import generate
from clicks2pref.rewards.base import RewardBatch
from clicks2pref.rewards.diversity import distinct_n

COLUMNS = ["policy", "basis", "est_ctr", "ci_low", "ci_high", "sigma_low", "sigma_high", "lift_vs_logged",
           "lift_low", "lift_high", "format_rate", "distinct_2", "mean_cosine"]
BEST_OF_COLUMNS = ["policy", "reward", "est_ctr", "vs_policy", "vs_ci_low", "vs_ci_high", "cross_check_gain"]


def policy_samples(model, tok, template, conversations: Sequence[list[dict]], gen, seed: int, samples: int
                   ) -> list[list[str]]:
    """`samples` sampled outputs per conversation, grouped by conversation."""
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], gen,
                    num_return_sequences=samples, seed=seed, desc=f"offline: {len(conversations)} conversations")
    return [list(outs[i * samples:(i + 1) * samples]) for i in range(len(conversations))]


def score_samples(estimators: dict[str, ClickModelCTR], primary: str, conversations: Sequence[list[dict]],
                  samples: Sequence[Sequence[str]], band: float, diversity=None) -> dict:
    """A policy's samples estimated by every estimator: per-context mean CTR (primary), its σ band, each sample's
    CTR [C, S] (for best-of), the cross-check estimates, format rate and diversity of its first panels."""
    est = {kind: sample_ctr(e, conversations, samples, band) for kind, e in estimators.items()}
    k = estimators[primary].k
    parsed = [parse_suggestions(t, k) for group in samples for t in group]
    firsts = [parse_suggestions(group[0], k).suggestions for group in samples]
    m = est[primary]
    out = {"samples": [list(g) for g in samples], "outputs": [g[0] for g in samples],
           "sample_ctr": m["ctr"].tolist(), "sample_low": m["low"].tolist(), "sample_high": m["high"].tolist(),
           "per_context_ctr": m["ctr"].mean(axis=1).tolist(),
           "low": m["low"].mean(axis=1).tolist(), "high": m["high"].mean(axis=1).tolist(),
           "cross": {kind: v["ctr"].tolist() for kind, v in est.items() if kind != primary},
           "format_rate": float(np.mean([p.well_formed for p in parsed])) if parsed else float("nan"),
           "distinct_2": distinct_n(firsts, 2)}
    out["mean_cosine"] = diversity.mean_pairwise_cosine(firsts) if diversity is not None else float("nan")
    return out


def best_of(scored: dict, scores: np.ndarray, n: int, reward: str, bootstrap_samples: int, ci_level: float,
            seed: int) -> tuple[dict, dict]:
    """(a scored-like result of serving the reward's pick of the first n samples, its best-of row): the pick's
    estimated CTR against serving a random one of the same n samples (paired over contexts), and the same gain
    measured by the cross-check estimator (less circular when the reward is the primary estimator's model)."""
    ctr = np.asarray(scored["sample_ctr"])[:, :n]
    best = pick_best(scores, n)
    rows = np.arange(len(best))
    chosen, random_pick = ctr[rows, best], ctr.mean(axis=1)
    lift = paired_lift(chosen, random_pick, bootstrap_samples, ci_level, seed)
    cross = {kind: float(np.mean(np.asarray(v)[rows, best] - np.asarray(v)[:, :n].mean(axis=1)))
             for kind, v in scored["cross"].items()}
    outputs = [scored["samples"][i][j] for i, j in enumerate(best)]
    picked = dict(scored, per_context_ctr=chosen.tolist(), outputs=outputs,
                  low=np.asarray(scored["sample_low"])[rows, best].tolist(),
                  high=np.asarray(scored["sample_high"])[rows, best].tolist())
    est = bootstrap_mean(chosen, bootstrap_samples, ci_level, seed)
    return picked, {"reward": reward, "est_ctr": est.mean, "vs_policy": lift["diff"], "vs_ci_low": lift["diff_low"],
                    "vs_ci_high": lift["diff_high"],
                    "cross_check_gain": next(iter(cross.values()), float("nan")), "cross_check": cross}


def offline_table(results: dict[str, dict], anchor: dict, bootstrap_samples: int, ci_level: float, seed: int
                  ) -> list[dict]:
    """The logged policy's row (estimated, with its observed CTR beside it) and one row per policy."""
    est, obs = anchor["estimated"], anchor["observed"]
    logged = row("logged", est, anchor["low"], anchor["high"], est, bootstrap_samples, ci_level, seed,
                 format_rate=float("nan"), distinct_2=float("nan"), mean_cosine=float("nan"))
    observed = bootstrap_mean(obs, bootstrap_samples, ci_level, seed, None)
    logged.update(observed_ctr=observed.mean, observed_low=observed.low, observed_high=observed.high,
                  impressions=int(np.sum(anchor["impressions"])))
    rows = [logged]
    for name, m in results.items():
        rows.append(row(name, np.asarray(m["per_context_ctr"]), np.asarray(m["low"]), np.asarray(m["high"]), est,
                        bootstrap_samples, ci_level, seed, format_rate=m["format_rate"], distinct_2=m["distinct_2"],
                        mean_cosine=m["mean_cosine"]))
    return rows


def plan_rows(rows: Sequence[dict], alpha: float, power: float) -> list[dict]:
    """The A/B plan of every policy row against the logged policy's observed CTR."""
    logged = rows[0]
    return ab_plan(logged["observed_ctr"], [{"policy": r["policy"], "relative_lift": r["lift_vs_logged"],
                                             "lift_low": r["lift_low"], "lift_high": r["lift_high"]}
                                            for r in rows[1:]], alpha, power)


def markdown_report(report: dict, table: Callable[[list, Sequence[str]], str]) -> str:
    """results.md without an oracle: the offline table, the best-of rows, what the numbers are."""
    logged = report["rows"][0]
    text = [f"Offline evaluation ({BASIS}): {report['contexts']} held-out logged conversations, "
            f"{report['samples_per_context']} panel(s) each; estimated CTR = the click model the reward models "
            f"learned ({report['estimator']}: learned examination × attraction); {report['ci']} bootstrap CIs over "
            f"conversations; σ band: the estimate at μ ∓ {report['band']:g}σ; lift is paired against the logged "
            f"policy's estimated CTR on the same conversations.", "",
            f"Logged policy: observed CTR {logged['observed_ctr']:.4f} [{logged['observed_low']:.4f}, "
            f"{logged['observed_high']:.4f}] over {logged['impressions']} held-out impressions; estimated "
            f"{logged['est_ctr']:.4f} (the estimator's level against what users did). Held-out click "
            f"log-likelihood per impression: {report['log_likelihood']:.4f}.", "",
            table(report["rows"], COLUMNS)]
    if report.get("best_of"):
        text += ["Best-of-n (estimated CTR of the reward's pick vs. a random one of the same samples; cross-check: "
                 "the same gain under the other reward model's click model):", "",
                 table(report["best_of"], BEST_OF_COLUMNS)]
    return "\n".join(text)


def ab_section(report: dict) -> str:
    return ab_markdown(report["ab_plan"], report["rows"][0]["observed_ctr"], report["alpha"], report["power"],
                       report.get("impressions_per_day"))


def evaluate_offline(cfg, estimators: dict[str, ClickModelCTR], primary: str, test_records: Sequence[dict],
                     policies: dict[str, tuple], rerank: Callable | None, diversity) -> dict:
    """The offline report: every policy in `policies` (name -> (load() -> (model, tokenizer), template)) on the
    held-out conversations of `test_records`, against the logged policy's panels there; best-of-n by `rerank`
    (a RewardBatch scorer, or None) for `eval.best_of.policies`; the A/B plan. `eval.offline` sets the σ band,
    α and power."""
    ev, off = cfg.eval, cfg.eval.offline
    anchor = logged_anchor(estimators[primary], test_records, off.sigma_band)
    n = len(anchor["contexts"]) if not ev.max_contexts else min(ev.max_contexts, len(anchor["contexts"]))
    anchor = {k: v[:n] for k, v in anchor.items()}
    conversations = anchor["contexts"]
    results, best_rows = {}, []
    for name, (load, template) in policies.items():
        model, tok = load()
        samples = policy_samples(model, tok, template, conversations, cfg.policy.generation, cfg.seed,
                                 ev.samples_per_context)
        results[name] = score_samples(estimators, primary, conversations, samples, off.sigma_band, diversity)
    bo = ev.best_of
    for name in ([p for p in bo.policies if p in results] if bo.n and rerank is not None else []):
        m = results[name]
        flat = [t for group in m["samples"] for t in group]
        contexts = [c for c, group in zip(conversations, m["samples"]) for _ in group]
        scores = np.asarray(rerank(RewardBatch(contexts, flat, estimators[primary].k)), dtype=float)
        picked, best_row = best_of(m, scores.reshape(len(conversations), -1), bo.n, bo.reward, ev.bootstrap_samples,
                                   ev.ci_level, cfg.seed)
        results[f"{name}+bo{bo.n}"] = picked
        best_rows.append({"policy": f"{name}+bo{bo.n}", **best_row})
    rows = offline_table(results, anchor, ev.bootstrap_samples, ev.ci_level, cfg.seed)
    return {"basis": BASIS, "estimator": primary, "band": off.sigma_band, "contexts": n,
            "samples_per_context": ev.samples_per_context, "ci": f"{ev.ci_level:.0%}", "rows": rows,
            "best_of": best_rows, "alpha": off.alpha, "power": off.power,
            "ab_plan": plan_rows(rows, off.alpha, off.power),
            "log_likelihood": estimators[primary].log_likelihood(test_records),
            "examples": [{"context": conversations[i], **{p: results[p]["outputs"][i] for p in results}}
                         for i in range(min(3, n))]}


def estimated_per_context(estimator: ClickModelCTR, results: dict[str, dict], conversations: Sequence
                          ) -> dict[str, list[float]]:
    """On the simulator: the offline estimate of every evaluated policy per context (the mean over its samples, as
    the oracle's), so the estimator's bias can be measured beside the oracle (`beside_oracle`)."""
    per = {}
    for name, m in results.items():
        groups = m["samples"] if m.get("samples") and m.get("samples_per_context", 1) > 1 else \
            [[o] for o in m["outputs"]]
        per[name] = sample_ctr(estimator, conversations, groups)["ctr"].mean(axis=1).tolist()
    return per


def beside_oracle(per: dict[str, list[float]], results: dict[str, dict], reference: str, bootstrap_samples: int,
                  ci_level: float, seed: int) -> dict[str, dict]:
    """Per policy: estimated CTR, the estimated relative lift over `reference` with its CI, the oracle's relative
    lift, and their gap (`per`: `estimated_per_context`)."""
    out = {}
    ref_oracle = float(np.mean(results[reference]["per_context_ctr"]))
    for name in per:
        lift = paired_lift(np.asarray(per[name]), np.asarray(per[reference]), bootstrap_samples, ci_level, seed)
        oracle = (float(np.mean(results[name]["per_context_ctr"])) - ref_oracle) / ref_oracle if ref_oracle \
            else float("nan")
        out[name] = {"est_ctr": float(np.mean(per[name])), "est_lift": lift["relative"],
                     "est_lift_low": lift["relative_low"], "est_lift_high": lift["relative_high"],
                     "oracle_lift": oracle, "lift_gap": lift["relative"] - oracle, "basis": BASIS}
    return out
