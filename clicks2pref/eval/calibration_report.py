"""The reward models' calibration report (SPEC 5.6), rendered: the model × split table, the decile tables and
the reliability diagrams (PNG) of what `clicks2pref.eval.rm_calibration` measured. It computes nothing an
artifact stores, so editing it rebuilds no stage.
"""
from __future__ import annotations

import json
from pathlib import Path

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
