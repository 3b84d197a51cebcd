"""Faults a cluster throws at a run, at 2 ranks and more with real processes, real signals and real bad data:
a NaN on one rank, repeated NaNs, preemption (SIGTERM to the --nproc parent), a lost `latest` pointer, a
second job on the same run folder, a changed config on resume, the same bad shard at 1, 2 and 4 ranks,
and a resume at another world size, checked with the sample ledger."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmlscale.train.ledger import check_ledger, read_lines
from dmlscale.train.schedule import cosine_factor
from dmlscale.train.train_cli import EXIT_STOPPED, RankFailed, main
from tests.integration.test_train_quickstart import REPO, tiny_args

PLAIN = ["checkpoint.export=false", "eval.zero_shot=false", "train.log_every=1"]


def weights(run_dir: Path, tag: str) -> dict:
    from dmlscale.train.export import consolidated_state_dict

    return consolidated_state_dict(run_dir / "checkpoints", tag)


def metrics_by_step(run_dir: Path) -> dict[int, dict]:
    from dmlscale.monitor import read_metrics

    return {record["step"]: record for record in read_metrics(run_dir / "metrics.jsonl")}


def wait_for_steps(process: subprocess.Popen, metrics: Path, count: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= count):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no progress: {process.communicate()[0][-3000:]}")
        time.sleep(0.1)


def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmlscale.cli", "train", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_nan_on_one_rank_skips_that_update_on_every_rank(tmp_path, digits_root):
    run_dir = tmp_path / "nan"
    summary = main(["--nproc", "2", *tiny_args(run_dir, digits_root, *PLAIN, "faults.nan_steps=[3]",
                                               "faults.nan_rank=1", "checkpoint.every=1", "checkpoint.keep_last=0",
                                               "train.ledger=true")])
    assert summary["step"] == 6 and summary["skipped_nonfinite"] == 1
    before, at, after = (weights(run_dir, f"step_{s:08d}") for s in (2, 3, 4))
    assert all(torch.equal(before[k], at[k]) for k in before)  # step 3's update was skipped on both ranks
    assert any(not torch.equal(at[k], after[k]) for k in at)  # ... and step 4 trained again
    final = weights(run_dir, "step_00000006")
    assert all(torch.isfinite(value).all() for value in final.values())
    metrics = metrics_by_step(run_dir)
    assert [metrics[s]["train/skipped_nonfinite"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    skipped_lines = [(line["rank"], line["step"]) for line in read_lines(run_dir) if not line["applied"]]
    assert sorted(skipped_lines) == [(0, 3), (1, 3)]  # the ledger says step 3 trained nothing on either rank


@pytest.mark.slow
def test_repeated_nans_stop_the_run_with_the_last_finite_checkpoint_as_latest(tmp_path, digits_root):
    run_dir = tmp_path / "nans"
    args = tiny_args(run_dir, digits_root, *PLAIN, "train.steps=8", "faults.nan_steps=[4,5,6]", "faults.nan_rank=1",
                     "checkpoint.every=2", "train.max_nonfinite_steps=3")
    with pytest.raises(RankFailed, match=r"NonFiniteError: 3 steps in a row \(up to step 6\).*first seen on rank 1"):
        main(["--nproc", "2", *args])
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000004"  # saved after step 4's skipped update: still finite; nothing after it
    assert all(torch.isfinite(value).all() for value in weights(run_dir, latest).values())


@pytest.mark.slow
def test_sigterm_to_the_nproc_parent_stops_both_ranks_with_a_checkpoint(tmp_path, digits_root):
    run_dir = tmp_path / "preempted"
    args = tiny_args(run_dir, digits_root, *PLAIN, "train.steps=2000", "checkpoint.every=2", "checkpoint.keep_last=2")
    process = start_training(["--nproc", "2", *args])
    wait_for_steps(process, run_dir / "metrics.jsonl", 5)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]
    last = max(metrics_by_step(run_dir))
    assert f"stopped after step {last} (SIGTERM received by ranks 0, 1)" in output
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 2 and checkpoints[-1] == f"step_{last:08d}"  # keep_last=2 and the stop checkpoint

    (run_dir / "checkpoints" / "latest").unlink()  # a lost pointer: resume from the newest complete checkpoint
    summary = main(["--nproc", "2", "--resume", "latest", *args, f"train.stop_at={last + 2}"])
    assert summary["stopped"] and summary["step"] == last + 2
    assert sorted(metrics_by_step(run_dir)) == list(range(1, last + 3))  # nothing lost, nothing trained twice


@pytest.mark.slow
def test_second_job_on_a_locked_run_folder_and_resume_guards(tmp_path, digits_root):
    from dmlscale.train.run_lock import RunLockedError

    run_dir = tmp_path / "locked"
    args = tiny_args(run_dir, digits_root, *PLAIN, "train.steps=400", "optim.lr=1e-3")
    process = start_training(args)
    wait_for_steps(process, run_dir / "metrics.jsonl", 3)
    started = time.monotonic()
    with pytest.raises(RunLockedError, match=f"pid {process.pid}"):
        main(["--resume", "latest", *args])
    assert time.monotonic() - started < 1.0
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == EXIT_STOPPED, output[-3000:]
    last = max(metrics_by_step(run_dir))

    config_before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match=r"seed \(checkpoint: 0, now: 1\)"):
        main(["--resume", "latest", *args, "seed=1"])
    assert (run_dir / "config.yaml").read_bytes() == config_before  # a refused resume writes nothing

    summary = main(["--resume", "latest", *args[:-1], "optim.lr=1e-4", f"train.stop_at={last + 2}"])
    assert summary["stopped"] and summary["step"] == last + 2
    metrics = metrics_by_step(run_dir)
    schedule = lambda step: cosine_factor(step, warmup_steps=2, total_steps=400)  # noqa: E731
    assert metrics[last]["train/lr"] == pytest.approx(1e-3 * schedule(last), rel=1e-9)  # the old session
    assert metrics[last + 1]["train/lr"] == pytest.approx(1e-4 * schedule(last + 1), rel=1e-9)  # the new rate


@pytest.fixture(scope="module")
def half_truncated_root(digits_root, tmp_path_factory):
    """The digits shards with one training shard cut to half its bytes (sizes.json still lists it whole)."""
    root = tmp_path_factory.mktemp("dirty")
    shutil.copytree(digits_root / "train", root / "train")
    shutil.copytree(digits_root / "test", root / "test")
    shard = sorted((root / "train").glob("*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    return root, shard.name


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_the_same_bad_shard_stops_the_run_at_every_world_size(tmp_path, half_truncated_root, world_size):
    from dmlscale.data import DirtyDataError

    root, bad_shard = half_truncated_root
    args = tiny_args(tmp_path / "dirty", root, *PLAIN, "train.steps=400", "data.skip_check_after=100",
                     "data.max_skip_fraction=0.05", "train.log_every=50")
    pattern = rf"^bad data: .* samples read were skipped .*data\.max_skip_fraction=0\.05.*{bad_shard}"
    with pytest.raises(DirtyDataError, match=pattern):  # at --nproc N the ranks' error itself, not RankFailed
        main(["--nproc", str(world_size), *args])


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["2->1", "1->2"])
def test_resume_at_another_world_size_finishes_the_epoch_exactly_once(tmp_path, digits_root, before, after):
    run_dir = tmp_path / "elastic"
    global_batch, stop = 16, 30
    common = [*PLAIN, "train.ledger=true", "train.steps=100", "optim.warmup_steps=2"]

    def args(world: int, *extra: str) -> list[str]:
        launch = ["--nproc", str(world)] if world > 1 else []
        return [*launch, *tiny_args(run_dir, digits_root, *common, f"data.batch_size={global_batch // world}",
                                    *extra)]
    main(args(before, f"train.stop_at={stop}"))
    summary = main(["--resume", "latest", *args(after)])
    assert summary["step"] == 100 and summary["world_size"] == after

    report = check_ledger(run_dir)
    epoch0 = report.epochs[0]
    assert epoch0.repeated == {}, list(epoch0.repeated)[:5]  # no sample of epoch 0 trained twice
    num_train = 1347
    assert num_train - global_batch < epoch0.num_distinct <= num_train  # all but less than one global batch
    assert report.ranks_per_step[stop] == before and report.ranks_per_step[stop + 1] == after
    losses = {step: record["train/loss"] for step, record in metrics_by_step(run_dir).items()}
    assert sorted(losses) == list(range(1, 101))
    assert abs(losses[stop + 1] - losses[stop]) < abs(losses[1] - losses[stop])  # the curve continues


@pytest.mark.slow
def test_a_stopped_rank_is_named_when_the_collective_times_out(tmp_path, digits_root):
    import psutil

    run_dir = tmp_path / "stalled"
    process = start_training(["--nproc", "2", *tiny_args(run_dir, digits_root, *PLAIN, "train.steps=2000",
                                                         "train.group_timeout_s=15")])
    wait_for_steps(process, run_dir / "metrics.jsonl", 3)
    servers = [child for child in psutil.Process(process.pid).children() if "forkserver" in " ".join(child.cmdline())]
    ranks = [rank for server in servers for rank in server.children()]  # the ranks fork from the fork server
    assert len(ranks) == 2
    ranks[1].suspend()  # SIGSTOP: a hung rank, alive but silent
    try:
        output = process.communicate(timeout=240)[0]
    finally:
        for child in ranks:
            if child.is_running():
                child.kill()
    assert process.returncode not in (0, EXIT_STOPPED)
    assert "StalledRankError" in output and "last reached step" in output, output[-3000:]
