"""Record an `experiment=methods` sweep into experiments/methods/results.json and draw methods.png.

    python experiments/methods/from_runs.py ARTIFACTS_DIR COMMIT [COMMAND]

Reads every `grpo/*/grpo.json` the sweep's jobs wrote (one per optimizer × budget; the newest wins where a
pair ran twice) and, for the best-of-16 reference, the newest `evaluate/*/evaluation.json` of the same
artifacts. Each job's held-out evaluation is paired against the same SFT policy on the same test contexts, so
the lifts compare. Compute is read as token-passes, the meter's own count (`clicks2pref.lit.compute`): every
position through a forward pass of any model (sampling, the loss's log-probs, the reference, the reward models,
the perplexity reference) counts 1, and a back-propagated one its model's backward weight more (2 for full
fine-tuning, 1 + the trainable share with LoRA); the policy and the reward models are the same size here, so the
counts add. A job recorded before the meter counted every model (no `token_passes`) is refused.
"""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402
CONF = HERE.parent.parent / "conf" / "experiment" / "methods.yaml"
NAMES = {"grpo": "GRPO", "rft": "rejection-sampling fine-tuning", "dpo_clicks": "DPO on logged click pairs",
         "online_dpo": "online DPO (own samples, best vs worst)"}


def token_passes(compute: dict) -> float:
    """The meter's forward-equivalents; a job metered before every model's forward was counted has none."""
    if "token_passes" not in compute:
        raise SystemExit("a grpo.json without compute.token_passes was metered before every model's forward was "
                         "counted (reward-model passes were missed): run the sweep again")
    return compute["token_passes"]


def sweep_budgets() -> list[int]:
    """The policy-sample budgets `experiment=methods` sweeps (its evaluation settings; the default run's GRPO at
    another budget is evaluated otherwise and stays out)."""
    params = yaml.safe_load(CONF.read_text())["hydra"]["sweeper"]["params"]
    return [int(b) for b in str(params["optimizer.policy_samples"]).split(",")]


def jobs(root: Path, rewards: str = "full", budgets: list[int] | None = None) -> list[dict]:
    """One grpo.json per (optimizer, policy samples) trained on the `rewards` preset at one of `budgets` (default:
    the sweep's), the newest where a pair ran twice (a Table 4 sweep sharing the folder trains the same
    optimizer on other presets)."""
    budgets = sweep_budgets() if budgets is None else budgets
    found: dict = {}
    for path in sorted(root.glob("grpo/*/grpo.json"), key=lambda p: p.stat().st_mtime):
        job = json.loads(path.read_text())
        if ("optimizer" in job and "compute" in job and "eval" in job and job.get("rewards", rewards) == rewards
                and job.get("policy_samples") in budgets):
            found[(job["optimizer"], job["policy_samples"])] = job
    return [found[k] for k in sorted(found, key=lambda k: (list(NAMES).index(k[0]) if k[0] in NAMES else 99, k[1]))]


def verdict(rows: list[dict], target: str = "grpo") -> str:
    """The cheapest job whose lift over SFT reaches the largest-budget GRPO job's lift (point estimates)."""
    anchors = [r for r in rows if r["optimizer"] == target]
    if not anchors:
        return f"no {NAMES[target]} job to compare with"
    anchor = max(anchors, key=lambda r: r["policy_samples"])
    reach = [r for r in rows if r is not anchor and r["lift"] >= anchor["lift"]]
    label = f"{NAMES[target]}@{anchor['policy_samples']:,}"
    if not reach:
        return f"none reaches {label}'s lift ({anchor['lift']:+.4f})"
    best = min(reach, key=lambda r: r["compute"])
    share = best["compute"] / anchor["compute"]
    return (f"{NAMES[best['optimizer']]}@{best['policy_samples']:,} reaches {label}'s lift ({best['lift']:+.4f} "
            f"against {anchor['lift']:+.4f}) at {share:.0%} of its compute")


def summarise(job: dict) -> dict:
    e = job["eval"]
    return {"optimizer": job["optimizer"], "policy_samples": job["policy_samples"],
            "ctr": e["grpo"]["oracle_ctr"], "ctr_ci": [e["grpo"]["ci_low"], e["grpo"]["ci_high"]],
            # a job that kept the SFT policy differs from it by float noise: rounded, it reads 0 rather than −0
            "lift": round(e["lift"]["ctr_diff"], 8) + 0.0,
            "lift_ci": [round(e["lift"]["ci_low"], 8) + 0.0, round(e["lift"]["ci_high"], 8) + 0.0],
            "sft": e["sft"]["oracle_ctr"], "contexts": e["contexts"], "compute": token_passes(job["compute"]),
            "generated": job["compute"]["generated_tokens"], "reward_tokens": job["compute"]["reward_tokens"],
            "seconds": job["compute"]["seconds"], "kept_step": job["selected"]["step"]}


def best_of_16(root: Path) -> float | None:
    found = sorted(root.glob("evaluate/*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(found):
        for row in record.evaluation(json.loads(path.read_text())).get("best_of", []):
            if row["policy"] == "sft+bo16":
                return row["oracle_ctr"]
    return None


def figure(rows: list[dict], sft: float, bo16: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == name]
        x = [r["compute"] for r in mine]
        y = [r["ctr"] for r in mine]
        err = [[r["ctr"] - r["ctr_ci"][0] for r in mine], [r["ctr_ci"][1] - r["ctr"] for r in mine]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=NAMES.get(name, name))
    ax.axhline(sft, color="grey", linestyle="--", label="SFT")
    if bo16 is not None:
        ax.axhline(bo16, color="black", linestyle=":", label="SFT, best of 16 (inference time)")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (token-passes: forward 1, backward its weight more)")
    ax.set_ylabel("oracle CTR, held-out topics")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(artifacts: str, commit: str, command: str = "python -m clicks2pref -m experiment=methods") -> dict:
    root = Path(artifacts)
    rows = [summarise(j) for j in jobs(root)]
    if not rows:
        raise SystemExit(f"{root}: no grpo/*/grpo.json with an optimizer's compute; run the sweep first")
    run = "methods"
    # SFT's CTR as the largest job's evaluation measured it (16 panels per context; a smaller job may use fewer)
    sft, bo16 = max(rows, key=lambda r: r["policy_samples"])["sft"], best_of_16(root)
    results = {"runs": {run: {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
                              "command": command, "note": f"{rows[0]['contexts']} test contexts of held-out topics, "
                                                          "16 panels each; CIs resample topics"}},
               "values": {"sft_ctr": {"v": sft, "fmt": "{:.4f}", "run": run, "what": "SFT oracle CTR"}},
               "tables": {}}
    if bo16 is not None:
        results["values"]["best_of_16_ctr"] = {"v": bo16, "fmt": "{:.4f}", "run": run,
                                               "what": "SFT, best of 16 by the composite reward (evaluate)"}
    results["tables"]["methods"] = {
        "columns": ["method", "policy samples", "oracle CTR [95 % CI]", "− SFT, paired [95 % CI]",
                    "compute (M token-passes)", "generated tokens", "reward-model tokens", "train seconds",
                    "kept step"],
        "fmt": {"policy samples": "{:,}", "oracle CTR [95 % CI]": "{:.4f}", "− SFT, paired [95 % CI]": "{:+.4f}",
                "compute (M token-passes)": "{:.2f}", "generated tokens": "{:,}", "reward-model tokens": "{:,}",
                "train seconds": "{:,.0f}", "kept step": "{:d}"},
        "rows": [[NAMES.get(r["optimizer"], r["optimizer"]), r["policy_samples"], {"v": r["ctr"], "ci": r["ctr_ci"]},
                  {"v": r["lift"], "ci": r["lift_ci"]}, r["compute"] / 1e6, r["generated"], r["reward_tokens"],
                  r["seconds"], r["kept_step"]] for r in rows],
        "run": run}
    results["tables"]["verdict"] = {"columns": ["question", "answer"],
                                    "rows": [["cheapest method reaching GRPO's largest-budget lift", verdict(rows)]],
                                    "run": run}
    (HERE / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    figure(rows, sft, bo16, HERE / "methods.png")
    print(results["tables"]["verdict"]["rows"][0][1])
    return results


if __name__ == "__main__":
    main(*sys.argv[1:4])
