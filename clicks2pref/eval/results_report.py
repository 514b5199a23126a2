"""The evaluation's report: one row per policy (oracle CTR, paired lift and GSB against the reference, format,
diversity, nearness to the canned panel), the best-of-n and estimated-beside-oracle tables, the CTR figure,
the reward models' calibration section, and the files a run folder gets (results.md, evaluation.json,
metrics.json, ctr.png; offline: ab_plan.md)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from clicks2pref.eval.calibration_report import markdown_report, write_report
from clicks2pref.eval.heldout import markdown_table, paired, with_ci
from clicks2pref.eval.offline import BASIS
from clicks2pref.eval.offline_report import COLUMNS as OFFLINE_COLUMNS
from clicks2pref.eval.offline_report import ab_section, beside_oracle
from clicks2pref.eval.offline_report import markdown_report as offline_markdown
from clicks2pref.eval.power import panels_for
from clicks2pref.loggers import log_metrics, log_table

COLUMNS = ["policy", "oracle_ctr", "ci_low", "ci_high", "lift", "gsb", "format_rate", "distinct_2", "mean_cosine",
           "canned_cosine"]
REFERENCE_NOTE = ("canned: the same template questions for every context of a topic, no model (the floor); ideal: "
                  "the oracle's best panel of the world's own questions (an upper bound no policy can see); "
                  "canned_cosine: mean largest cosine (eval.diversity_embedder) of a policy's suggestions to the "
                  "canned panel.")
BEST_OF_COLUMNS = ["policy", "reward", "oracle_ctr", "vs_policy", "vs_ci_low", "vs_ci_high", "reward_spearman",
                   "oracle_best", "contexts"]
PANEL_COLUMNS = ["pair", "panels", "sd_within", "sd_between", "half_width", "between_share", "half_width_half",
                 "half_width_double", "panels_needed"]
ESTIMATED_COLUMNS = ["policy", "est_ctr", "est_lift", "est_lift_low", "est_lift_high", "oracle_lift", "lift_gap"]
ESTIMATED_NOTE = ("Estimated (model-based: the reward models' click model, as without a simulator) beside the oracle; "
                  "lifts relative to the reference, gap = estimated − oracle lift:")


# what the evaluate artifact keeps of each policy's evaluation: the measurements every report number is computed from
MEASURED = ("per_context_ctr", "sample_ctr", "format_rate", "distinct_2", "mean_pairwise_cosine", "canned_cosine",
            "outputs", "contexts", "samples_per_context", "n_contexts", "template", "rl_logs")


def summarize(cfg, measured: dict) -> dict:
    """The evaluation's report from what the evaluate stage measured (its artifact): each policy's CTR with its
    bootstrap CI, the rows against `eval.reference` (paired lift, GSB), the best-of rows against a random one of
    the same samples, and the offline estimator's lifts beside the oracle's. Seconds, whatever the CI settings."""
    ev, seed = cfg.eval, cfg.seed
    results = {name: with_ci(m, ev.bootstrap_samples, ev.ci_level, seed, ev.ci_clusters)
               for name, m in measured["results"].items()}
    best_rows = []
    for b in measured.get("best_of", []):
        best, random_pick = results[b["policy"]], {**results[b["of"]], "per_context_ctr": b["random_ctr"]}
        lift = paired(best, random_pick, ev, ev.gsb.margin, seed)
        best_rows.append({"policy": b["policy"], "reward": b["reward"], "oracle_ctr": best["oracle_ctr"],
                          "vs_policy": lift["ctr_diff"], "vs_ci_low": lift["ci_low"], "vs_ci_high": lift["ci_high"],
                          "reward_spearman": b["reward_spearman"], "oracle_best": b["oracle_best"],
                          "contexts": b["contexts"]})
    report = {k: measured[k] for k in ("policies", "split", "contexts", "samples_per_context", "examples")}
    report.update(reference=ev.reference, ci=f"{ev.ci_level:.0%}", rows=compare(results, ev.reference, ev, seed),
                  best_of=best_rows, per_context_ctr={n: m["per_context_ctr"] for n, m in results.items()})
    if measured.get("variance"):
        report["variance"] = measured["variance"]
        report["panels"] = panel_plan(measured["variance"], results, ev, seed)
    if measured.get("estimated"):
        report["estimated"] = beside_oracle(measured["estimated"], results, ev.reference, ev.bootstrap_samples,
                                            ev.ci_level, seed)
    for k in ("calibration", "seconds"):
        if k in measured:
            report[k] = measured[k]
    return report


def panel_plan(variance: dict, results: dict, ev, seed: int) -> list[dict]:
    """Per paired difference: its CI's half-width at the evaluation's panels per context, the share of its variance
    between contexts (what more panels cannot remove), the half-width at half and twice the panels, and the panels
    a half-width of `eval.target_half_width` needs (`clicks2pref.eval.power.panels_for`)."""
    rows = []
    for pair in variance["pairs"]:
        lift = paired(results[pair["policy"]], results[pair["against"]], ev, ev.gsb.margin, seed)
        half = (lift["ci_high"] - lift["ci_low"]) / 2
        sd = {f"sd_{k}": None if pair[k] is None else math.sqrt(pair[k]) for k in ("within", "between")}
        rows.append({"pair": f"{pair['policy']} − {pair['against']}", "panels": pair["panels"], **sd,
                     "half_width": half,
                     **panels_for(pair, half, ev.target_half_width, ev.ci_level)})
    return rows


def compare(results: dict, reference: str, ev, seed: int) -> list[dict]:
    """One row per policy: CTR and CI, paired lift over the reference with its CI, GSB, format, diversity."""
    ref = results[reference]
    rows = []
    for name, m in results.items():
        lift = paired(m, ref, ev, ev.gsb.margin, seed)
        rows.append({"policy": name, "oracle_ctr": m["oracle_ctr"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                     "lift": lift["relative"] if lift["relative"] is not None else float("nan"),
                     "diff_ci_low": lift["ci_low"], "diff_ci_high": lift["ci_high"], "gsb": lift["gsb"]["gsb"],
                     "format_rate": m["format_rate"], "distinct_2": m["distinct_2"],
                     "mean_cosine": m["mean_pairwise_cosine"], "canned_cosine": m.get("canned_cosine", float("nan"))})
    return rows


def plot_ctr(rows: list[dict], path: Path, ci: str) -> None:
    from matplotlib.figure import Figure  # the plotting extra, loaded only when a plot is drawn

    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.2))
    ax = fig.subplots()
    x = range(len(rows))
    ctr = [r["oracle_ctr"] for r in rows]
    err = [[r["oracle_ctr"] - r["ci_low"] for r in rows], [r["ci_high"] - r["oracle_ctr"] for r in rows]]
    ax.bar(x, ctr, yerr=err, capsize=4, color="#4c72b0")
    # a policy given as a folder is named by its last two parts (e.g. grpo/<key>), so labels do not overlap
    labels = ["/".join(Path(r["policy"]).parts[-2:]) if "/" in r["policy"] else r["policy"] for r in rows]
    folders = any("/" in name for name in labels)
    ax.set_xticks(list(x), labels, rotation=20 if folders else 0, ha="right" if folders else "center",
                  fontsize="small")
    ax.set_ylabel(f"oracle CTR ({ci} CI)")
    ax.set_title("held-out contexts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def publish_offline(cfg, report: dict, loggers, fresh: bool = True) -> dict:
    """results.md (the offline table), ab_plan.md, evaluation.json and metrics.json; both on the console."""
    out_dir = Path(cfg.paths.output_dir)
    text, plan = offline_markdown(report, markdown_table), ab_section(report)
    (out_dir / "results.md").write_text(text + "\n" + plan)
    (out_dir / "ab_plan.md").write_text(plan)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    flat = {f"eval/{r['policy']}/{c}": float(r[c]) for r in report["rows"]
            for c in ("est_ctr", "ci_low", "ci_high", "lift_vs_logged")}
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=2))
    log_table(loggers, "eval/offline", [{c: r[c] for c in OFFLINE_COLUMNS} for r in report["rows"]])
    log_metrics(loggers, flat)
    print("\n" + text)
    print(plan)
    if report.get("calibration"):
        write_report(report["calibration"], out_dir)
        if fresh:
            print("\n" + markdown_report(report["calibration"]))
    print(f"metrics: {out_dir / 'evaluation.json'}\nA/B plan: {out_dir / 'ab_plan.md'}")
    return report


def publish(cfg, report: dict, loggers, fresh: bool = True) -> dict:
    """results.md, evaluation.json, metrics.json and ctr.png in the run folder; the table on the console (and, for a
    fresh evaluation, the calibration report: a reused one's is written to its files only)."""
    if report.get("basis") == BASIS:
        return publish_offline(cfg, report, loggers, fresh)
    ev, out_dir, rows, ci = cfg.eval, Path(cfg.paths.output_dir), report["rows"], report["ci"]
    table = markdown_table(rows, COLUMNS)
    flat = {f"eval/{r['policy']}/{c}": float(r[c]) for r in rows for c in COLUMNS[1:]}
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=2))
    best = report.get("best_of") or []
    best_table = markdown_table(best, BEST_OF_COLUMNS) if best else ""
    if best:
        flat.update({f"eval/{r['policy']}/{c}": float(r[c]) for r in best for c in ("vs_policy", "reward_spearman")})
    (out_dir / "results.md").write_text(f"Held-out {ev.split} contexts: {report['contexts']}, "
                                        f"{ev.samples_per_context} panel(s) each; lift and GSB vs. {ev.reference}; "
                                        f"{ci} bootstrap CIs over {ev.ci_clusters}s.\n{REFERENCE_NOTE}\n\n"
                                        + table + (
                                            "\nBest-of-n (vs. a random one of the same samples, paired; reward ρ: "
                                            f"within-context Spearman with the oracle):\n\n{best_table}"
                                            if best else ""))
    plot_ctr(rows, out_dir / "ctr.png", ci)
    log_table(loggers, "eval/results", [{c: r[c] for c in COLUMNS} for r in rows])
    log_metrics(loggers, flat)
    print(f"\nResults on {report['contexts']} held-out contexts (lift, GSB vs. {ev.reference}; {ci} CIs over "
          f"{ev.ci_clusters}s):\n")
    print(table + REFERENCE_NOTE + "\n")
    if best:
        print("Best-of-n (vs. a random one of the same n samples; reward ρ = within-context Spearman with the "
              "oracle):\n")
        print(best_table)
    if report.get("panels"):  # the variance split: how many panels per context the paired differences need
        plan = markdown_table([{c: "-" if r[c] is None else r[c] for c in PANEL_COLUMNS} for r in report["panels"]],
                              PANEL_COLUMNS)
        note = (f"Panels per context (paired differences, panel j against panel j; sd_within/sd_between: standard "
                f"deviation of the per-panel difference within and between contexts; between_share: of the CI's "
                f"variance, what more panels cannot remove; panels_needed: for a {ci} half-width of "
                f"±{ev.target_half_width}, '-' when the between-context part alone is wider):")
        with open(out_dir / "results.md", "a") as f:
            f.write(f"\n{note}\n\n{plan}")
        needs = ", ".join(f"{r['pair']} {r['panels_needed'] or 'more contexts'}" for r in report["panels"])
        print(f"Panels per context for {ci} paired half-widths of ±{ev.target_half_width} (now "
              f"{report['samples_per_context']}; the variance split in results.md): {needs}\n")
    if report.get("estimated"):  # the offline estimator's lift beside the oracle's: how far off it is, per method
        est = [{"policy": n, **v} for n, v in report["estimated"].items()]
        est_table = markdown_table(est, ESTIMATED_COLUMNS)
        with open(out_dir / "results.md", "a") as f:
            f.write(f"\n{ESTIMATED_NOTE}\n\n{est_table}")
        log_metrics(loggers, {f"eval/{r['policy']}/{c}": float(r[c]) for r in est
                              for c in ("est_ctr", "est_lift", "lift_gap")})
        print(f"{ESTIMATED_NOTE}\n")
        print(est_table)
    if report.get("calibration"):
        write_report(report["calibration"], out_dir)
        if fresh:
            print("\n" + markdown_report(report["calibration"]))
    print(f"metrics: {out_dir / 'evaluation.json'}\nplots:   {out_dir / 'ctr.png'}")
    return report
