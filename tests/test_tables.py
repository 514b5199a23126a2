"""Every results table in the READMEs is rendered from committed result files, byte for byte."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("experiment_tables", ROOT / "experiments" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables()


def test_every_block_matches_its_results_file(capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().out


def test_every_markdown_table_is_a_generated_block():
    """A table typed outside a block is a number that nothing regenerates."""
    for readme in tables.readmes():
        outside = tables.BLOCK.sub("", readme.read_text())
        typed = [line for line in outside.splitlines() if re.match(r"^\|.*\|$", line)]
        assert not typed, f"{readme.relative_to(ROOT)}: a table outside a <!-- table:NAME --> block: {typed[0]}"


def test_readme_stays_a_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert text.split("```bash\n", 1)[1].startswith("make run ")
    assert "\nmake test " in text.split("```", 2)[1]


@pytest.fixture
def copy(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path


def test_a_changed_result_fails_the_check(copy, capsys):
    path = copy / "experiments" / "contextual" / "results.json"
    results = json.loads(path.read_text())
    results["values"]["sft_minus_baseline"]["v"] = 0.5              # a value the claims cite
    results["tables"]["default_run"]["rows"][1][1]["v"] = 0.5       # a cell of a table two READMEs show
    path.write_text(json.dumps(results))
    assert tables.main(["--check"], root=copy) == 1
    out = capsys.readouterr().out
    assert "experiments/contextual/README.md: table:default_run" in out
    assert "README.md: table:contextual/default_run" in out
    assert "README.md: table:claims" in out
    assert tables.main([], root=copy) == 0          # rewriting brings the READMEs back in line
    assert tables.main(["--check"], root=copy) == 0
    readme = (copy / "README.md").read_text()
    low, high = (tables._num(x, "+.4f") for x in results["values"]["sft_minus_baseline"]["ci"])
    assert f"| +0.5000 [{low}, {high}] |" in readme and "| SFT | 0.5000 [" in readme


def test_a_missing_value_reads_not_yet_measured(copy):
    path = copy / "experiments" / "contextual" / "results.json"
    results = json.loads(path.read_text())
    del results["values"]["population_b_canned_over_ideal"]
    path.write_text(json.dumps(results))
    claims = tables.render_claims(copy)
    row = next(line for line in claims.splitlines() if line.startswith("| a canned panel"))
    assert row.endswith("| 0.85 | 0.18 | not yet measured | 0.02–0.91 |")  # the other cells still read theirs


def test_a_run_not_made_yet_names_the_command_and_the_recorder():
    runs = {"r": {"date": None, "commit": None, "machine": None, "command": "python -m clicks2pref x=1",
                  "record": "python experiments/f/from_run.py RUN_DIR COMMIT"}}
    table = {"columns": ["policy", "CTR"], "rows": [["SFT", tables.NOT_MEASURED]], "run": "r"}
    assert tables.render_table(table, {}, runs).splitlines()[-1] == (
        "<sub>not yet measured: `python -m clicks2pref x=1`, then `python experiments/f/from_run.py RUN_DIR COMMIT` "
        "(`results.json`: `r`)</sub>")
    assert tables.render_runs(runs).splitlines()[-1] == (
        "| `r` | not yet measured |  |  | `python -m clicks2pref x=1` (record: `python experiments/f/from_run.py "
        "RUN_DIR COMMIT`) |")


def test_a_claim_cell_shows_the_values_it_names_beside_its_own(copy):
    path = copy / "experiments" / "contextual" / "results.json"
    results = json.loads(path.read_text())
    for name, v in (("grpo_over_sft_estimated", 0.25), ("grpo_over_sft_oracle", 0.1)):
        results["values"][name] = {"v": v, "fmt": "{:+.1%}", "run": "r", "what": name}
    results["values"].pop("grpo_over_sft_estimate_gap", None)
    path.write_text(json.dumps(results))
    row = next(line for line in tables.render_claims(copy).splitlines()
               if line.startswith("| offline evaluation (no oracle): GRPO"))
    assert "| +25.0% (oracle +10.0%; gap not yet measured) |" in row


def test_a_block_naming_no_table_is_an_error(copy, capsys):
    readme = copy / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- table:default_run/nothing -->\n<!-- /table:default_run/nothing -->\n")
    assert tables.main(["--check"], root=copy) == 2
    assert "no table 'nothing'" in capsys.readouterr().err
