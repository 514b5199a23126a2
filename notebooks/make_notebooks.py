"""Writes calibration.ipynb and ablations.ipynb (kept as code so their JSON stays valid and reviewable).

    python notebooks/make_notebooks.py
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def notebook(cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(c[1:]) if c.startswith("#") and c[1] == "#" else nbf.v4.new_code_cell(c)
                for c in cells]
    parameters = nb.cells[1]
    parameters.metadata["tags"] = ["parameters"]
    return nb


CALIBRATION = [
    "## Reward-model calibration\nReliability diagrams, accuracy vs. confidence and vs. reference perplexity, "
    "IID (week 4) vs. OOD, GaRM vs. BTRM. Set `RUN_DIR` to a `stage=rm` run folder (or its artifact) holding "
    "`calibration.json`.",
    'import os\nRUN_DIR = os.environ.get("RUN_DIR", ".")',
    "import json\nfrom pathlib import Path\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
    "report = json.loads((Path(RUN_DIR) / 'calibration.json').read_text())\n"
    "rows = [(k, s, m) for k, r in report['kinds'].items() for s, m in r['splits'].items() if m.get('n_pairs')]\n"
    "for k, s, m in rows:\n    print(f\"{k:5s} {s:4s} pairs={m['n_pairs']:5d} acc={m['accuracy']:.3f} ece={m['ece']:.4f}\")",
    "## Reliability diagrams",
    "fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False)\n"
    "for ax, (k, s, m) in zip(axes[0], rows):\n"
    "    b = [x for x in m['reliability'] if x['count']]\n"
    "    ax.plot([0.5, 1], [0.5, 1], '--', color='gray')\n"
    "    ax.plot([x['confidence'] for x in b], [x['accuracy'] for x in b], 'o-')\n"
    "    ax.set(title=f\"{k} {s}: ECE {m['ece']:.3f}\", xlabel='confidence', ylabel='accuracy')\n"
    "fig.tight_layout()",
    "## Accuracy by confidence decile and by reference log-perplexity decile",
    "fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))\n"
    "for k, s, m in rows:\n"
    "    c = m['by_confidence']\n"
    "    axes[0].plot([x['confidence'] for x in c], [x['accuracy'] for x in c], 'o-', label=f'{k} {s}')\n"
    "    if 'by_log_ppl' in m:\n"
    "        p = m['by_log_ppl']\n"
    "        axes[1].plot([x['log_ppl'] for x in p], [x['accuracy'] for x in p], 'o-', label=f'{k} {s}')\n"
    "axes[0].set(xlabel='confidence (decile mean)', ylabel='accuracy')\n"
    "axes[1].set(xlabel='reference log-perplexity (decile mean)', ylabel='accuracy')\n"
    "axes[0].legend(fontsize=7)\nfig.tight_layout()",
]

ABLATIONS = [
    "## Ablations (Table 3 / Table 4)\nOne row per job of a multirun, the swept values as columns. Set `SWEEP_DIR` "
    "to a multirun folder (`logs/<task>/multiruns/<time>`).",
    'import os\nSWEEP_DIR = os.environ.get("SWEEP_DIR", ".")',
    "from pathlib import Path\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
    "from clicks2pref.report import job_rows\n"
    "rows = job_rows(Path(SWEEP_DIR))\n"
    "metrics = sorted({c for r in rows for c in r if '/' in c})\n"
    "swept = [c for c in dict.fromkeys(c for r in rows for c in r) if c not in ('job', 'status') and '/' not in c]\n"
    "for r in rows:\n    print(r['job'], r['status'], {c: r.get(c) for c in swept})",
    "## Headline metrics per job",
    "headline = [m for m in metrics if m.endswith(('oracle_ctr', 'gsb', 'format_rate', 'val_format_rate'))][:4]\n"
    "labels = [', '.join(str(r.get(c)) for c in swept) or str(r['job']) for r in rows]\n"
    "fig, axes = plt.subplots(1, max(len(headline), 1), figsize=(4 * max(len(headline), 1), 3.4), squeeze=False)\n"
    "for ax, m in zip(axes[0], headline):\n"
    "    ax.bar(range(len(rows)), [r.get(m) or 0 for r in rows])\n"
    "    ax.set_xticks(range(len(rows)), labels, rotation=30, ha='right', fontsize=7)\n"
    "    ax.set_title(m, fontsize=8)\n"
    "fig.tight_layout()",
]

if __name__ == "__main__":
    nbf.write(notebook(CALIBRATION), HERE / "calibration.ipynb")
    nbf.write(notebook(ABLATIONS), HERE / "ablations.ipynb")
