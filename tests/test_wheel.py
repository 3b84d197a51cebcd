"""The package as a user gets it: a wheel built from the tree, installed (without dependencies) into a fresh
venv that sees this environment's packages, runs `dmlscale train` from an unrelated directory, with the
recipes and model configs found inside the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE_ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache")
NOT_SOURCE_AT_ROOT = {".git", ".venv", "runs", "data", "build", "dist"}  # only at the top: dmlscale/data is source


def not_source(folder: str, names: list[str]) -> set[str]:
    top = {name for name in names if name in NOT_SOURCE_AT_ROOT} if Path(folder) == REPO else set()
    return top | NOT_SOURCE_ANYWHERE(folder, names)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command[:4]} exited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


@pytest.mark.slow
def test_installed_wheel_trains_the_quickstart_from_an_unrelated_directory(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the working tree
    shutil.copytree(REPO, source, ignore=not_source)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)])
    (wheel,) = (tmp_path / "dist").glob("dmlscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for packaged in ("dmlscale/configs/quickstart.yaml", "dmlscale/configs/metric_learning_digits.yaml",
                     "dmlscale/configs/models/dml-quickstart-rn.json"):
        assert packaged in names, packaged

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies come from this environment (a path entry, so its editable dmlscale is not loaded)
    (site / "environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    located = run([str(python), "-c", "import dmlscale; print(dmlscale.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(located.strip()).is_relative_to(site), located  # the wheel's copy, not the repository's

    result = run([str(venv / "bin" / "dmlscale"), "train", "train.steps=5", "monitor.console=false"],
                 cwd=elsewhere, env=dict(env, OMP_NUM_THREADS="1"))
    assert "dmlscale train: 5 steps on 1 process(es)" in result.stdout, result.stdout[-2000:]
    # the recipe's 30 warmup steps and evaluation every 100 no longer apply: said once each, not refused
    for said in ("dmlscale train: warning: optim.warmup_steps=30 exceeds train.steps=5",
                 "dmlscale train: warning: eval.every=100 exceeds train.steps=5"):
        assert result.stderr.count(said) == 1, result.stderr[-3000:]
    assert (elsewhere / "runs" / "quickstart" / "summary.json").is_file()
    assert (elsewhere / "data" / "digits" / "train" / "sizes.json").is_file()  # the recipe wrote its shards here
