"""The wheel carries the configs: built, installed in a fresh venv and run from outside the checkout.

The venv reuses the project venv's installed packages (a `.pth` added after the install, so pip never sees the
checkout's editable install and nothing is downloaded); `clicks2pref` itself comes only from the wheel.
"""
from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_every_package_folder_is_listed_and_conf_is_mapped_into_the_package():
    cfg = _setup_cfg()
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clicks2pref").rglob("__init__.py")}
    assert found | {"clicks2pref.conf"} == listed, "list each package folder in setup.cfg [options] packages"
    assert cfg["options"]["package_dir"].split() == ["clicks2pref.conf", "=", "conf"]
    assert "clicks2pref = clicks2pref.__main__:main" in cfg["options.entry_points"]["console_scripts"]


def _run(args, cwd, timeout=600, **env):
    """A subprocess with the checkout off its path and one thread per library (the machine is shared)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env)
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=environ, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with the built wheel installed: (its python, its bin folder, the wheel)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment: the wheel cannot be built offline")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ there
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("clicks2pref", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("clicks2pref-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=tmp)
    # only now the project venv's packages (torch, hydra, the model packages): a plain path line, so its
    # .pth files, the checkout's editable-install hook among them, are not run
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_project_venv.pth").write_text("".join(f"{p}\n" for p in ours))
    return python, venv / "bin", wheel


def test_the_wheel_holds_every_config_file(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"clicks2pref/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "clicks2pref/conf/config.yaml" in names and confs <= names, sorted(confs - names)
    assert any(n.startswith("clicks2pref/data/world/") for n in names)


def test_installed_cli_prints_the_config_and_runs_a_stage_outside_the_checkout(installed, tmp_path):
    python, bin_dir, _ = installed
    where = _run([python, "-c", "import clicks2pref; print(clicks2pref.__file__); print(clicks2pref.CONF_DIR)"],
                 cwd=tmp_path).stdout.split()
    assert Path(where[0]).is_relative_to(bin_dir.parent) and Path(where[1]).is_relative_to(bin_dir.parent), where

    job = _run([bin_dir / "clicks2pref", "--cfg", "job"], cwd=tmp_path).stdout
    assert "name: pipeline" in job and "group_size: 4" in job

    _run([bin_dir / "clicks2pref", "experiment=smoke", "stage=collect", f"paths.root_dir={tmp_path}"], cwd=tmp_path)
    weeks = sorted(tmp_path.glob("artifacts/collect/*/week1.jsonl"))
    assert len(weeks) == 1 and weeks[0].stat().st_size > 0
