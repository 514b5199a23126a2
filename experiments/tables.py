"""Render every results table of the READMEs from the committed result files.

A README marks each table as a block::

    <!-- table:NAME -->
    ...generated...
    <!-- /table:NAME -->

NAME is ``FOLDER/TABLE`` (the table ``TABLE`` of ``experiments/FOLDER/results.json``), a bare ``TABLE``
(the results.json beside the README), ``runs`` (that file's runs: date, commit, machine, command) or
``claims`` (``experiments/claims.json``). Numbers are typed
once, into results.json; a typed number in a README drifts, a generated one cannot.

    python experiments/tables.py           # rewrite every block in place
    python experiments/tables.py --check   # exit 1 naming each README and block that differs

results.json::

    {"runs":   {RUN: {"date", "commit", "machine", "command", "note"?, "record"?}},   # date null: not run yet
     "values": {NAME: {"v", "ci"?, "fmt"?, "run", "what"}},       # named numbers the claims cite
     "tables": {TABLE: {"columns": [...], "fmt": {COLUMN: "{:.4f}"}, "rows": [[CELL, ...]],
                        "fmt_default"?: "{:.3f}", "run"?: RUN}}}

A CELL is text, null (empty), a number (rendered with its column's format), or
``{"v", "ci"?: [lo, hi], "fmt"?, "bold"?, "note"?, "ref"?}``; ``{"ref": NAME}`` renders ``values[NAME]``.
Minus signs render as U+2212, as the READMEs write them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
CLAIMS = EXPERIMENTS / "claims.json"
NOT_MEASURED = "not yet measured"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w/.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)
TEMPLATE = re.compile(r"^(?P<pre>[^{]*)\{:(?P<spec>[^}]*)\}(?P<post>.*)$", re.S)


class TableError(Exception):
    """A block names a table or value that no results file holds."""


def readmes(root: Path = ROOT) -> list[Path]:
    """The READMEs whose blocks this script owns: the top level and one per experiment folder."""
    return [root / "README.md", *sorted((root / "experiments").glob("*/README.md"))]


def load(folder: Path) -> dict:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def number(value: float, template: str) -> str:
    """One number through a template such as ``{:+.4f}`` or ``{:,.0f} s``; minus as U+2212."""
    pre, spec, post = _split(template)
    return pre + _num(value, spec) + post


def _split(template: str) -> tuple[str, str, str]:
    match = TEMPLATE.match(template)
    if match is None:
        raise TableError(f"format {template!r} is not a template like '{{:.4f}}'")
    return match["pre"], match["spec"], match["post"]


def _num(value: float, spec: str) -> str:
    return format(value, spec).replace("-", "\u2212")


def cell(value, template: str | None, values: dict) -> str:
    """Render one table cell (see the module docstring for the forms)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return number(value, template or "{}")
    if "ref" in value:
        if value["ref"] not in values:
            raise TableError(f"no value named {value['ref']!r}")
        return cell({**values[value["ref"]], **{k: v for k, v in value.items() if k != "ref"}},
                    template, values)
    pre, spec, post = _split(value.get("fmt") or template or "{}")
    text = _num(value["v"], spec)
    if "ci" in value:
        low, high = value["ci"]
        text += f" [{_num(low, spec)}, {_num(high, spec)}]"
    text = pre + text + post
    if value.get("bold"):
        text = f"**{text}**"
    return text + value.get("note", "")


def render_table(table: dict, values: dict, runs: dict) -> str:
    """A Markdown table, then one line naming the run it came from."""
    columns = table["columns"]
    formats = table.get("fmt", {})
    default = table.get("fmt_default")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table["rows"]:
        if len(row) != len(columns):
            raise TableError(f"a row has {len(row)} cells for {len(columns)} columns: {row}")
        cells = [cell(v, formats.get(c, default), values) for c, v in zip(columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    if table.get("run"):
        lines.append("")
        lines.append(source_line(table["run"], runs))
    return "\n".join(lines) + "\n"


def source_line(run: str, runs: dict) -> str:
    if run not in runs:
        raise TableError(f"no run named {run!r}")
    info = runs[run]
    if not info.get("date"):  # a run not made yet: the command that makes it and the one that records it
        steps = ", then ".join(f"`{c}`" for c in (info.get("command"), info.get("record")) if c)
        return f"<sub>{NOT_MEASURED}: {steps} (`results.json`: `{run}`)</sub>"
    parts = [info.get("date"), f"commit {info['commit']}" if info.get("commit") else None, info.get("machine")]
    return "<sub>" + " · ".join(p for p in parts if p) + f" (`results.json`: `{run}`)</sub>"


def render_runs(runs: dict) -> str:
    """The provenance of a folder's results: one row per run (a block named ``runs``)."""
    lines = ["| run | date | commit | machine | command |", "|---|---|---|---|---|"]
    for name, info in runs.items():
        command = f"`{info['command']}`" if info.get("command") else ""
        notes = [info.get("note"), f"record: `{info['record']}`" if info.get("record") else None]
        note = f" ({'; '.join(n for n in notes if n)})" if any(notes) else ""
        lines.append(f"| `{name}` | {info.get('date') or NOT_MEASURED} | {info.get('commit') or ''} | "
                     f"{info.get('machine') or ''} | {command}{note} |")
    return "\n".join(lines) + "\n"


def render_claims(root: Path) -> str:
    """claim | one column per simulator; a missing result reads 'not yet measured', never typed."""
    spec = json.loads((root / "experiments" / "claims.json").read_text())
    columns = spec["columns"]
    lines = ["| claim | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for claim in spec["claims"]:
        cells = [claim_cell(claim["cells"].get(column), root) for column in columns]
        lines.append(f"| {claim['claim']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claim_cell(entry: dict | None, root: Path) -> str:
    """A value, then its note and the values named in ``with`` ([[label, ref], ...]) in parentheses."""
    if entry is None:
        return NOT_MEASURED
    text = claim_value(entry["ref"], root)
    if text == NOT_MEASURED:
        return text
    beside = [entry["note"]] if entry.get("note") else []
    beside += [f"{label} {claim_value(ref, root)}" for label, ref in entry.get("with", [])]
    return text + (f" ({'; '.join(beside)})" if beside else "")


def claim_value(ref: str, root: Path) -> str:
    folder, _, name = ref.partition("/")
    value = load(root / "experiments" / folder).get("values", {}).get(name)
    if value is None:
        return NOT_MEASURED
    return cell({k: v for k, v in value.items() if k in ("v", "ci", "fmt")}, "{}", {})


def render_block(name: str, readme: Path, root: Path) -> str:
    if name == "claims":
        return render_claims(root)
    folder, _, table_name = name.rpartition("/")
    where = root / "experiments" / folder if folder else readme.parent
    results = load(where)
    table = results.get("tables", {}).get(table_name)
    if table is None and table_name == "runs" and results.get("runs"):
        return render_runs(results["runs"])
    if table is None:
        raise TableError(f"{readme.relative_to(root)}: block {name!r}: no table {table_name!r} in "
                         f"{(where / 'results.json').relative_to(root)}")
    return render_table(table, results.get("values", {}), results.get("runs", {}))


def regenerate(readme: Path, root: Path) -> tuple[str, list[str]]:
    """The README with every block re-rendered, and the names of the blocks that changed."""
    text = readme.read_text()
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        body = render_block(match["name"], readme, root)
        if body != match["body"]:
            changed.append(match["name"])
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block differs")
    args = parser.parse_args(argv)
    stale = []
    for readme in readmes(root):
        if not readme.exists():
            continue
        try:
            text, changed = regenerate(readme, root)
        except TableError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for name in changed:
            stale.append(f"{readme.relative_to(root)}: table:{name}")
        if changed and not args.check:
            readme.write_text(text)
    for line in stale:
        print(("differs from its results file: " if args.check else "rewrote ") + line)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
