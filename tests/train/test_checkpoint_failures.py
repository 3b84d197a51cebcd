"""Saves that must not happen or must fail cleanly, on real DeepSpeed engines and real filesystems:
retention, non-finite weights, a write failure on one rank only, a full tmpfs (you need root to mount
it; skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
import torch
import torch.distributed as dist

from dmlscale.train import checkpoint
from dmlscale.train.checkpoint_store import checkpoint_bytes, step_folders
from tests.distributed.launch import results, run_world
from tests.train.checkpoint_helpers import max_param_diff, small_engine, train_steps
from tests.train.helpers import full_params


def _retention_worker(rank, world_size, run_dir, keep_last, keep_every):
    engine = small_engine(zero_stage=0)
    kept = []
    for step in range(1, 8):
        checkpoint.save(engine, run_dir, step, keep_last=keep_last, keep_every=keep_every)
        kept.append([tag for _, tag in step_folders(run_dir)])
    return kept


@pytest.mark.slow
@pytest.mark.parametrize("keep_last,keep_every,want_at_3,want", [
    (2, 0, [2, 3], [6, 7]), (2, 3, [2, 3], [3, 6, 7]), (1, 2, [2, 3], [2, 4, 6, 7]),
    (0, 0, [1, 2, 3], [1, 2, 3, 4, 5, 6, 7])])
def test_retention_keeps_the_newest_and_the_multiples(tmp_path, keep_last, keep_every, want_at_3, want):
    (kept,) = results(run_world(_retention_worker, 1, tmp_path, keep_last, keep_every))
    assert kept[-1] == [checkpoint.tag_for_step(s) for s in want]
    assert (tmp_path / "latest").read_text() == "step_00000007"
    assert kept[2] == [checkpoint.tag_for_step(s) for s in want_at_3]
    assert all(checkpoint.verify(tmp_path, tag) is None for tag in kept[-1])


def _non_finite_worker(rank, world_size, run_dir, zero_stage):
    engine = small_engine(zero_stage=zero_stage)
    before = checkpoint.weights_finite(engine)
    if rank == 1:  # only rank 1's own shard of the weights goes bad
        with torch.no_grad():
            if zero_stage == 3:
                next(engine.module.parameters()).ds_tensor[0] = float("nan")
            else:
                engine.optimizer.single_partition_of_fp32_groups[0][0] = float("inf")
    after = checkpoint.weights_finite(engine)
    try:
        checkpoint.save(engine, run_dir, 5)
        error = None
    except checkpoint.NonFiniteWeightsError as raised:
        error = str(raised)
    return {"before": before, "after": after, "error": error}


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_non_finite_partition_on_one_rank_is_refused_on_every_rank(tmp_path, zero_stage):
    outcomes = results(run_world(_non_finite_worker, 2, tmp_path, zero_stage))
    for outcome in outcomes:
        assert outcome["before"] is True and outcome["after"] is False
        assert outcome["error"] is not None and "rank 1" in outcome["error"] and "non-finite" in outcome["error"]
    assert not (tmp_path / "step_00000005").exists() and not (tmp_path / "latest").exists()


def _one_rank_fails_worker(rank, world_size, run_dir):
    engine = small_engine(zero_stage=2)
    checkpoint.save(engine, run_dir, 1)
    train_steps(engine, rank, range(1))
    if rank == 1:  # a real write error on rank 1 only: its optimizer file's path is taken by a folder
        (run_dir / "step_00000002" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").mkdir(parents=True)
    dist.barrier()
    started = time.perf_counter()
    try:
        checkpoint.save(engine, run_dir, 2)
        error = None
    except checkpoint.CheckpointError as raised:
        error = str(raised)
    return {"error": error, "seconds": time.perf_counter() - started}


@pytest.mark.slow
def test_a_write_failure_on_one_rank_fails_every_rank(tmp_path):
    outcomes = results(run_world(_one_rank_fails_worker, 2, tmp_path))
    print([o["seconds"] for o in outcomes])
    for outcome in outcomes:
        assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in outcome["error"]
        assert "needs about" in outcome["error"] and "were free" in outcome["error"]
        assert outcome["seconds"] < 30  # nobody waited for a barrier timeout
    assert not (tmp_path / "step_00000002").exists()
    assert (tmp_path / "latest").read_text() == "step_00000001"
    assert checkpoint.verify(tmp_path, "step_00000001") is None


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill_until_free(directory, free_bytes: int) -> None:
    """A real filler file that leaves `free_bytes` free."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    size = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize - free_bytes
    with open(filler, "wb") as handle:
        handle.truncate(0)
        block = b"\0" * (1 << 20)
        while size > 0:
            size -= handle.write(block[:min(size, len(block))])


def _full_disk_worker(rank, world_size, disk, mode):
    run_dir = disk / "run"
    engine = small_engine(zero_stage=2)
    checkpoint.save(engine, run_dir, 0)  # before the first step: no Adam moments yet, the smaller checkpoint
    at_zero = full_params(engine)
    small = checkpoint_bytes(run_dir / "step_00000000")
    train_steps(engine, rank, range(1))
    if rank == 0:  # leave room for the old size (the estimate passes) but not for the new one
        _fill_until_free(disk, small // 2 if mode == "early" else small + (1 << 20))
    dist.barrier()
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    try:
        checkpoint.save(engine, run_dir, 1)
        error = None
    except checkpoint.CheckpointError as raised:
        error = str(raised)
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    fresh = small_engine(zero_stage=2, seed=3)
    state = checkpoint.load(fresh, run_dir)
    return {"error": error, "small": small, "free": free, "leftovers": leftovers, "state_step": state["step"],
            "latest": (run_dir / "latest").read_text(), "diff": max_param_diff(full_params(fresh), at_zero)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mid_write", "early"])
def test_full_disk_fails_clearly_and_keeps_the_previous_checkpoint(small_disk, mode):
    outcomes = results(run_world(_full_disk_worker, 2, small_disk, mode))
    print({k: v for k, v in outcomes[0].items()})
    for outcome in outcomes:
        error = outcome["error"]
        assert error is not None and "no space left on device" in error
        assert str(small_disk / "run") in error
        assert f"needs about {outcome['small']} bytes" in error
        assert f"{outcome['free']} bytes" in error and "were free" in error
        if mode == "early":
            assert "checked before writing" in error
        else:
            assert "step_00000001" in error and ".pt" in error  # the file that did not fit
        assert outcome["leftovers"] == ["step_00000000"]  # no partial step_00000001 files
        assert outcome["latest"] == "step_00000000" and outcome["state_step"] == 0
        assert outcome["diff"] == 0.0  # the previous checkpoint still loads, exactly
