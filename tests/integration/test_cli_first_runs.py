"""What a new user meets, through real `dmlscale train` processes (real DeepSpeed, real shards): a run folder
is never shared or overwritten by another run, a finished run resumed says so and writes nothing, bad data
stops with one `dmlscale train: error:` line and exit 2 at one and two processes, and no DeepSpeed start-up
noise reaches the console."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmlscale.train.train_cli import main
from tests.integration.test_train_quickstart import REPO, tiny_args

# what DeepSpeed and torch printed at every start on a machine without a GPU (before deepspeed_quiet.py)
STARTUP_NOISE = ("Setting accelerator to CPU", "No CUDA runtime is found", "built successfully")


def dmlscale_train(*args: str) -> subprocess.CompletedProcess:
    """The console command as a user runs it (from the repository, so this checkout is the one imported)."""
    return subprocess.run([sys.executable, "-m", "dmlscale.cli", "train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def folder_state(run_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def noise_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if any(n in line for n in STARTUP_NOISE)]


@pytest.mark.slow
def test_a_run_folder_is_never_shared_and_a_finished_run_says_so(tmp_path, digits_root):
    run_dir = tmp_path / "first"
    args = tiny_args(run_dir, digits_root, "train.steps=4")
    first = dmlscale_train(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert noise_lines(first) == [], first.stdout + first.stderr
    assert first.stdout.splitlines()[-1].startswith("dmlscale train: 4 steps on 1 process(es) in ")
    before = folder_state(run_dir)
    assert {"config.yaml", "summary.json", "checkpoints/step_00000004/complete.json"} <= set(before)

    # another run (another batch size) pointed at the folder: one line, exit 2, nothing in the folder touched
    refusal = (f"dmlscale train: error: run folder {str(run_dir)!r} already holds another run (checkpoints up to "
               f"step_00000004, summary.json, export/); continue it with --resume latest, or give this run its own "
               f"folder with name=NAME (runs/NAME) or run_dir=DIR, or remove the folder to start over")
    for launcher in ([], ["--nproc", "2"]):
        refused = dmlscale_train(*launcher, *args, "data.batch_size=4")
        assert (refused.returncode, refused.stdout, refused.stderr.splitlines()) == (2, "", [refusal]), launcher
        assert folder_state(run_dir) == before

    # the finished run resumed, by 1 process and by 2: one line, exit 0, nothing rewritten (no evaluation,
    # export or warning)
    for launcher in ([], ["--nproc", "2"]):
        finished = dmlscale_train(*launcher, "--resume", "latest", *args)
        assert (finished.returncode, finished.stderr) == (0, ""), (launcher, finished.stderr[-3000:])
        assert finished.stdout.splitlines() == [f"dmlscale train: run {run_dir} already finished at step 4 of 4; "
                                                f"nothing to do (raise train.steps to continue, e.g. --resume latest "
                                                f"train.steps=8)"], launcher
        assert folder_state(run_dir) == before, launcher

    # raising train.steps continues it
    continued = dmlscale_train("--resume", "latest", *args, "train.steps=6")
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert "resuming " + str(run_dir) + " from checkpoint step_00000004 (step 4)" in continued.stdout
    assert continued.stdout.splitlines()[-1].startswith("dmlscale train: 6 steps on 1 process(es) in ")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000006"

    # results without checkpoints are another run's too; --resume would find nothing to continue
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(ValueError, match=r"already holds another run \(summary\.json, export/\); give this run"):
        main(args)


def test_the_readme_quickstart_rows_write_one_run_folder_each():
    """The README's quickstart table lists commands to run one after another: each needs its own folder, or the
    second is refused (the first run's folder holds its checkpoints and results)."""
    from dmlscale.train.config import load_config
    from dmlscale.train.train_cli import add_arguments, resolve_config_path

    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `dmlscale train([^`]*)`", readme, flags=re.MULTILINE)
    nproc_lines = re.findall(r"^dmlscale train (--nproc [^#\n]*)", readme, flags=re.MULTILINE)
    assert len(rows) >= 3 and nproc_lines, (rows, nproc_lines)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run_dirs = {}
    for command in rows:
        args = parser.parse_args(shlex.split(command))
        assert args.resume is None, command
        run_dirs[command] = load_config(resolve_config_path(args.config), args.overrides).run_dir
    assert len(set(run_dirs.values())) == len(rows), run_dirs
    for command in nproc_lines:  # the "Many processes" example is not the quickstart's folder either
        args = parser.parse_args(shlex.split(command))
        assert load_config(resolve_config_path(args.config), args.overrides).run_dir != run_dirs[""], command


@pytest.fixture(scope="module")
def damaged_roots(digits_root, tmp_path_factory):
    """Digits shards written by `dmlscale shards`, training tars cut short: "partly" keeps 40% of each tar's bytes
    (more than a tenth of the samples unreadable), "wholly" keeps one sample per tar."""
    roots = {}
    for name, keep in (("partly", lambda size: size * 4 // 10), ("wholly", lambda size: 3000)):
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(digits_root / "train", root / "train")
        shutil.copytree(digits_root / "test", root / "test")
        for shard in sorted((root / "train").glob("*.tar")):
            data = shard.read_bytes()
            shard.write_bytes(data[:keep(len(data))])
        roots[name] = root
    return roots


@pytest.mark.slow
@pytest.mark.parametrize("damage, nproc, workers", [("partly", 1, 0), ("partly", 2, 2), ("wholly", 2, 2)])
def test_bad_data_stops_the_run_with_one_error_line_and_exit_2(tmp_path, damaged_roots, damage, nproc, workers):
    result = dmlscale_train("--nproc", str(nproc), *tiny_args(
        tmp_path / "dirty", damaged_roots[damage], "train.steps=400", f"data.num_workers={workers}",
        "data.skip_check_after=100", "checkpoint.export=false"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "[rank" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("dmlscale train: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert noise_lines(result) == []
    if damage == "partly":  # the run's limit, named by its config key
        assert re.match(r"dmlscale train: error: bad data: \d+ of \d+ samples read were skipped \(\d+\.\d% > "
                        r"data\.max_skip_fraction=0\.1\) over all ranks and epochs; reasons: truncated tar: \d+; ",
                        errors[0]), errors[0]
        assert errors[0].endswith("fix or drop those shards, or allow more with data.max_skip_fraction")
    else:  # nothing readable is left: no limit to raise (from a DataLoader worker, so not torch's traceback text)
        assert re.match(r"dmlscale train: error: (rank \d+: )?no readable sample left in epoch 0: every sample that "
                        r"reader \d+ may still read from the \d+ shards is unreadable \(truncated tar: \d+\), "
                        r"e\.g\. in .*\.tar; fix or replace the shards$", errors[0]), errors[0]
