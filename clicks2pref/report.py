"""`python -m clicks2pref.report MULTIRUN_DIR`: one table of a sweep, one row per job.

Each job folder holds Hydra's `.hydra/overrides.yaml` (the swept values become columns) and the
stage's flat `metrics.json`; the result is `report.md`, `report.csv` and one comparison plot per
headline metric, written into the multirun folder; for a GRPO sweep also `table4.md` (one row per
reward preset: GRPO against the SFT policy, from each job's `grpo.json`). A job that failed (no metrics) is listed with
its status, so one broken job never hides the others.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

HEADLINE = ("oracle_ctr", "gsb", "format_rate", "val_acc", "ece", "accuracy")


def write_job_metrics(cfg, stage: str, metrics: dict) -> None:
    """The run folder's flat `metrics.json` (one report row), written only by the job's own stage: a stage
    that another one runs first (sft before grpo, say) leaves the row to the stage that was asked for."""
    if cfg.stage.name == stage:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def job_rows(sweep: Path) -> list[dict]:
    rows = []
    for job in sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if (
            job / ".hydra" / "overrides.yaml").exists() else []
        row = {"job": int(job.name)}
        row.update(dict(o.split("=", 1) for o in overrides if "=" in o))
        metrics, error = job / "metrics.json", job / "error.txt"
        if metrics.exists():
            row.update(json.loads(metrics.read_text()))
        if error.exists():  # written by a job that raised (the sweep went on without it)
            last = error.read_text().strip().splitlines()[-1:]
            row["status"] = f"failed: {last[0][:120]}" if last else "failed"
        else:
            row["status"] = "ok" if metrics.exists() else "failed"
        rows.append(row)
    return rows


def write_report(sweep: Path) -> list[Path]:
    rows = job_rows(sweep)
    if not rows:
        raise SystemExit(f"error: {sweep} holds no job folders (0/, 1/, ...): pass a multirun folder")
    columns = list(dict.fromkeys(c for r in rows for c in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    (sweep / "report.md").write_text(f"Sweep {sweep}\n\n" + "\n".join(md) + "\n")
    with open(sweep / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    written = [sweep / "report.md", sweep / "report.csv"]
    swept = [c for c in columns if c not in ("job", "status") and "/" not in c]
    labels = [", ".join(f"{c}={r.get(c)}" for c in swept) or str(r["job"]) for r in rows]
    for metric in [c for c in columns if any(c.endswith(h) for h in HEADLINE)]:
        written.append(_plot(sweep, metric, labels, [r.get(metric) for r in rows]))
    grpo = sorted(sweep.glob("*/grpo.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    if grpo:  # a GRPO sweep (Table 4): one row per reward preset, GRPO against the SFT policy
        table4 = [summary_row(json.loads(p.read_text())) for p in grpo]
        md = ["| " + " | ".join(TABLE4) + " |", "|" + "---|" * len(TABLE4)]
        md += ["| " + " | ".join(fmt(r[c]) for c in TABLE4) + " |" for r in table4]
        (sweep / "table4.md").write_text("\n".join(md) + "\n")
        written.append(sweep / "table4.md")
    return written


TABLE4 = ("rewards", "oracle_ctr", "ci_low", "ci_high", "sft_ctr", "ctr_diff", "gsb", "format_rate", "distinct_2",
          "mean_cosine", "hacking_flag")


def summary_row(result: dict) -> dict:
    """One Table-4 row: the preset and GRPO vs. SFT on held-out contexts."""
    ev = result["eval"]
    return {"rewards": result["rewards"], "oracle_ctr": ev["grpo"]["oracle_ctr"], "ci_low": ev["grpo"]["ci_low"],
            "ci_high": ev["grpo"]["ci_high"], "sft_ctr": ev["sft"]["oracle_ctr"], "ctr_diff": ev["lift"]["ctr_diff"],
            "gsb": ev["gsb"]["gsb"], "format_rate": ev["grpo"]["format_rate"], "distinct_2": ev["grpo"]["distinct_2"],
            "mean_cosine": ev["grpo"]["mean_pairwise_cosine"], "hacking_flag": result["monitor"]["flagged"]}


def _plot(sweep: Path, metric: str, labels: list[str], values: list) -> Path:
    from matplotlib.figure import Figure  # lazy: matplotlib is a plotting extra

    fig = Figure(figsize=(max(4, 1.2 * len(labels)), 3.2))
    ax = fig.subplots()
    ax.bar(range(len(values)), [v if isinstance(v, (int, float)) else 0 for v in values], color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    fig.tight_layout()
    path = sweep / f"report_{metric.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    return path


def wandb_report(sweep: Path, project: str, rows: list[dict]) -> str:
    """A W&B report of the sweep (its jobs logged with `logger=wandb` form the group
    `<task>/<multirun folder>`): the table, one bar chart per headline metric and the runs. Returns the URL."""
    import wandb_workspaces.reports.v2 as wr  # lazy: wandb_workspaces is a W&B extra

    entity, _, name = project.rpartition("/")
    group = f"{sweep.parent.parent.name}/{sweep.name}"
    metrics = [c for c in dict.fromkeys(k for r in rows for k in r) if any(c.endswith(h) for h in HEADLINE)]
    runs = wr.Runset(entity=entity, project=name, name=group, filters=f"Metric('Group') = '{group}'")
    report = wr.Report(project=name, entity=entity, title=f"clicks2pref sweep {group}", blocks=[
        wr.H1(f"Sweep {group}"),
        wr.MarkdownBlock((sweep / "report.md").read_text()),
        wr.PanelGrid(runsets=[runs], panels=[wr.BarPlot(title=m, metrics=[m]) for m in metrics]),
    ])
    report.save()
    return report.url


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clicks2pref.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="a multirun folder (logs/<task>/multiruns/<time>)")
    ap.add_argument("--wandb", metavar="[ENTITY/]PROJECT", help="also build a W&B report of the sweep's runs "
                    "(logged with logger=wandb, online; needs `wandb login`)")
    args = ap.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a folder", file=sys.stderr)
        return 2
    for path in write_report(args.sweep):
        print(path)
    if args.wandb:
        print(f"W&B report: {wandb_report(args.sweep, args.wandb, job_rows(args.sweep))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
