"""Writes calibration.ipynb, ablations.ipynb and training.ipynb (kept as code so their JSON stays valid and
reviewable); given a run folder and a sweep folder it also executes them there and saves them with their
outputs, figures included (the committed notebooks are executed on a smoke run this way).

    python notebooks/make_notebooks.py                                   # the notebooks, without outputs
    python notebooks/make_notebooks.py --run-dir RUN --sweep-dir SWEEP   # executed on RUN (a pipeline run folder:
                                                                         # calibration.json, grpo.json) and SWEEP
                                                                         # (a Table 4 multirun folder)
"""
import argparse
import os
from pathlib import Path
from textwrap import dedent

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def figure(source: str) -> tuple:
    """A code cell that ends by showing a figure: tagged `figure` (the notebook test asserts it drew an image)."""
    return ("figure", source)


def notebook(cells) -> nbf.NotebookNode:
    """Markdown for a text starting with `##`, code otherwise; the second cell is the parameters cell."""
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, c in enumerate(cells):
        tags, source = ([c[0]], c[1]) if isinstance(c, tuple) else ([], c)
        source = dedent(source).strip()
        cell = nbf.v4.new_markdown_cell(source[1:]) if source.startswith("##") else nbf.v4.new_code_cell(source)
        cell.id = f"cell-{i}"  # stable ids: a regenerated notebook differs only where its cells do
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.cells[1].metadata["tags"] = ["parameters"]
    return nb


CALIBRATION = [
    "## Reward-model calibration\nReliability diagrams, accuracy vs. confidence and vs. reference perplexity, "
    "IID (week 4) vs. OOD, GaRM vs. BTRM. Set `RUN_DIR` to a `stage=rm` run folder (or its artifact) holding "
    "`calibration.json`.",
    'import os\nRUN_DIR = os.environ.get("RUN_DIR", ".")',
    """
    %matplotlib inline
    import json
    from pathlib import Path
    from matplotlib.figure import Figure
    report = json.loads((Path(RUN_DIR) / 'calibration.json').read_text())
    rows = [(k, s, m) for k, r in report['kinds'].items() for s, m in r['splits'].items() if m.get('n_pairs')]
    for k, s, m in rows:
        print(f"{k:5s} {s:4s} pairs={m['n_pairs']:5d} acc={m['accuracy']:.3f} ece={m['ece']:.4f}")
    """,
    "## Reliability diagrams",
    figure("""
    fig = Figure(figsize=(3.2 * len(rows), 3.2), layout='constrained')
    axes = fig.subplots(1, len(rows), squeeze=False)
    for ax, (k, s, m) in zip(axes[0], rows):
        b = [x for x in m['reliability'] if x['count']]
        ax.plot([0.5, 1], [0.5, 1], '--', color='gray')
        ax.plot([x['confidence'] for x in b], [x['accuracy'] for x in b], 'o-')
        ax.set(title=f"{k} {s}: ECE {m['ece']:.3f}", xlabel='confidence', ylabel='accuracy')
    fig
    """),
    "## Accuracy by confidence decile and by reference log-perplexity decile",
    figure("""
    fig = Figure(figsize=(9, 3.2), layout='constrained')
    axes = fig.subplots(1, 2)
    for k, s, m in rows:
        c = m['by_confidence']
        axes[0].plot([x['confidence'] for x in c], [x['accuracy'] for x in c], 'o-', label=f'{k} {s}')
        if 'by_log_ppl' in m:
            p = m['by_log_ppl']
            axes[1].plot([x['log_ppl'] for x in p], [x['accuracy'] for x in p], 'o-', label=f'{k} {s}')
    if not any('by_log_ppl' in m for _, _, m in rows):
        axes[1].text(0.5, 0.5, 'no reference log-perplexity\\n(reward_model.calibration.reference_ppl=false)',
                     ha='center', va='center', color='gray', transform=axes[1].transAxes)
    axes[0].set(xlabel='confidence (decile mean)', ylabel='accuracy')
    axes[1].set(xlabel='reference log-perplexity (decile mean)', ylabel='accuracy')
    axes[0].legend(fontsize=7)
    fig
    """),
]

ABLATIONS = [
    "## Ablations (Table 3 / Table 4)\nOne row per job of a multirun, the swept values as columns. Set `SWEEP_DIR` "
    "to a multirun folder (`logs/<task>/multiruns/<time>`).",
    'import os\nSWEEP_DIR = os.environ.get("SWEEP_DIR", ".")',
    """
    %matplotlib inline
    from pathlib import Path
    from matplotlib.figure import Figure
    from clicks2pref.report import job_rows
    rows = job_rows(Path(SWEEP_DIR))
    metrics = sorted({c for r in rows for c in r if '/' in c})
    swept = [c for c in dict.fromkeys(c for r in rows for c in r) if c not in ('job', 'status') and '/' not in c]
    varying = [c for c in swept if len({str(r.get(c)) for r in rows}) > 1] or swept  # what tells the jobs apart
    for r in rows:
        print(r['job'], r['status'], {c: r.get(c) for c in swept})
    """,
    "## Headline metrics per job",
    figure("""
    headline = [m for m in metrics if m.endswith(('oracle_ctr', 'gsb', 'format_rate', 'val_format_rate'))][:4]
    labels = [', '.join(str(r.get(c)) for c in varying) or str(r['job']) for r in rows]
    fig = Figure(figsize=(3.2 * max(len(headline), 1), 3.2), layout='constrained')
    axes = fig.subplots(1, max(len(headline), 1), squeeze=False)
    for ax, m in zip(axes[0], headline):
        ax.bar(range(len(rows)), [r.get(m) or 0 for r in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha='right', fontsize=7)
        ax.set_title(m, fontsize=8)
    fig
    """),
]

TRAINING = [
    "## GRPO training curves\nReward, KL and entropy per optimiser step (`csv/metrics.csv`, written with "
    "`logger=csv`) and the reward-hacking monitor's proxy reward against the oracle CTR on its probe contexts "
    "(`grpo.json`): a proxy that climbs while the oracle falls is reward hacking. The grpo stage writes the same "
    "figure as `training.png` in its run folder. Set `RUN_DIR` to a `stage=grpo` (or pipeline) run folder and "
    "`SWEEP_DIR` to a Table 4 multirun folder (`logs/grpo/multiruns/<time>`: one line per job).",
    'import os\nRUN_DIR = os.environ.get("RUN_DIR", ".")\nSWEEP_DIR = os.environ.get("SWEEP_DIR", "")',
    """
    %matplotlib inline
    from pathlib import Path
    from clicks2pref.eval.training import load_history, sweep_histories, training_figure


    def summary(h):
        last = {n: f"{h[n][-1][1]:.4f}" if h[n] else '–' for n in ('reward', 'proxy', 'oracle_ctr')}
        print(f"{h['label']:22s} steps {len(h['reward']):3d}, last reward {last['reward']}; monitor: "
              f"{len(h['proxy'])} evaluations, last proxy {last['proxy']}, oracle CTR {last['oracle_ctr']}, "
              f"flagged at {h['flagged_at'] or 'no step'}")


    run = load_history(Path(RUN_DIR))
    summary(run)
    """,
    "## One run",
    figure("training_figure([run], title=f\"GRPO ({run['label']}), run {Path(RUN_DIR).resolve().name}\")"),
    "## A sweep: one line per job",
    figure("""
    jobs = sweep_histories(Path(SWEEP_DIR)) if SWEEP_DIR else []
    for h in jobs:
        summary(h)
    training_figure(jobs, title=f'sweep {Path(SWEEP_DIR).resolve().name}') if jobs else print('set SWEEP_DIR')
    """),
]

NOTEBOOKS = {"calibration.ipynb": (CALIBRATION, ("RUN_DIR",)), "ablations.ipynb": (ABLATIONS, ("SWEEP_DIR",)),
             "training.ipynb": (TRAINING, ("RUN_DIR", "SWEEP_DIR"))}


def execute(nb: nbf.NotebookNode, env: dict) -> None:
    """Runs `nb` in a fresh kernel with `env` (RUN_DIR, SWEEP_DIR) set; its outputs stay in `nb`."""
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(HERE)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="execute calibration.ipynb and training.ipynb on this run folder")
    ap.add_argument("--sweep-dir", help="execute ablations.ipynb and training.ipynb on this multirun folder")
    args = ap.parse_args()
    folders = {"RUN_DIR": args.run_dir, "SWEEP_DIR": args.sweep_dir}
    for name, (cells, needs) in NOTEBOOKS.items():
        nb = notebook(cells)
        run = all(folders[k] for k in needs)
        if run:
            execute(nb, {k: str(Path(folders[k]).resolve()) for k in needs})
        nbf.write(nb, HERE / name)
        print(HERE / name, "(executed)" if run else "")
