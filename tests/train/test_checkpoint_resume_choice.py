"""Manifests, retention and the choice of checkpoint on resume, on real 2-rank ZeRO-2 checkpoints.

One spawned world writes step_1..3 (keep_last=0); each test copies that run folder and damages it
the way real runs get damaged: a deleted or garbled `latest`, a rank's file missing, a truncated file.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from dmlscale.train import checkpoint
from dmlscale.train.checkpoint_store import MANIFEST
from tests.distributed.launch import results, run_world
from tests.train.checkpoint_helpers import max_param_diff, small_engine, train_steps
from tests.train.helpers import full_params


def _write_run(rank, world_size, run_dir):
    engine = small_engine(zero_stage=2)
    saved = {}
    for step in (1, 2, 3):
        train_steps(engine, rank, range(step - 1, step))
        checkpoint.save(engine, run_dir, step, {"data": {"at": step}}, run_id="r1")
        saved[step] = full_params(engine)
    if rank == 0:  # the measured failure: a deleted pointer beside good checkpoints
        (run_dir / "latest").unlink()
    torch.distributed.barrier()
    fresh = small_engine(zero_stage=2, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = checkpoint.load(fresh, run_dir)
    return {"state_step": state["step"], "diff_to_step3": max_param_diff(full_params(fresh), saved[3]),
            "warnings": [str(w.message) for w in caught if "latest" in str(w.message)]}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("template")
    outcomes = results(run_world(_write_run, 2, run_dir))
    (run_dir / "latest").write_text("step_00000003")
    return run_dir, outcomes


@pytest.fixture
def run_dir(template, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(template[0], copy)
    return copy


@pytest.mark.slow
def test_deleted_latest_loads_the_newest_complete_checkpoint(template):
    for outcome in template[1]:
        assert outcome["state_step"] == 3
        assert outcome["diff_to_step3"] == 0.0
        assert len(outcome["warnings"]) == 1 and "missing" in outcome["warnings"][0]
        assert "step_00000003" in outcome["warnings"][0]


@pytest.mark.slow
def test_manifest_lists_every_file_with_its_size(run_dir):
    manifest = json.loads((run_dir / "step_00000002" / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["step"] == 2 and manifest["zero_stage"] == 2
    on_disk = {p.name: p.stat().st_size for p in (run_dir / "step_00000002").iterdir() if p.name != MANIFEST}
    assert manifest["files"] == on_disk
    assert {"extra_rank00000.pt", "extra_rank00001.pt", "mp_rank_00_model_states.pt"} <= on_disk.keys()
    assert all(checkpoint.verify(run_dir, f"step_0000000{s}") is None for s in (1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["deleted", "garbled", "empty", "names_missing_folder"])
def test_broken_latest_resolves_to_newest_complete(run_dir, damage):
    pointer = run_dir / "latest"
    if damage == "deleted":
        pointer.unlink()
    elif damage == "garbled":
        pointer.write_bytes(b"\x93\xff\x00garbage")
    elif damage == "empty":
        pointer.write_text("")
    else:
        pointer.write_text("step_00000099")
    with pytest.warns(UserWarning, match="latest") as caught:
        assert checkpoint.find_resume_tag(run_dir) == "step_00000003"
    assert "step_00000003" in str(caught[0].message)


@pytest.mark.slow
def test_checkpoint_missing_a_rank_file_is_skipped(run_dir):
    (run_dir / "step_00000003" / "extra_rank00001.pt").unlink()
    assert "extra_rank00001.pt is missing" in checkpoint.verify(run_dir, "step_00000003")
    with pytest.warns(UserWarning, match="extra_rank00001.pt is missing"):
        assert checkpoint.find_resume_tag(run_dir) == "step_00000002"
    with pytest.raises(ValueError, match="step_00000003.*extra_rank00001.pt is missing"):
        checkpoint.find_resume_tag(run_dir, "step_00000003")


@pytest.mark.slow
def test_truncated_and_unloadable_files_are_found(run_dir):
    optim = next((run_dir / "step_00000003").glob("*rank_1_*optim_states.pt"))
    with open(optim, "r+b") as handle:
        handle.truncate(optim.stat().st_size // 2)
    assert "the manifest says" in checkpoint.verify(run_dir, "step_00000003")
    extra = run_dir / "step_00000002" / "extra_rank00000.pt"
    size = extra.stat().st_size
    extra.write_bytes(b"x" * size)  # same size, not a torch file
    assert "does not load" in checkpoint.verify(run_dir, "step_00000002")
    with pytest.warns(UserWarning) as caught:
        assert checkpoint.find_resume_tag(run_dir) == "step_00000001"
    assert "step_00000002" in str(caught[0].message)


@pytest.mark.slow
def test_no_complete_checkpoint_refuses_instead_of_starting_fresh(run_dir):
    for step in (1, 2, 3):
        (run_dir / f"step_0000000{step}" / "extra_rank00000.pt").unlink()
    with pytest.raises(ValueError, match="no complete checkpoint") as raised:
        checkpoint.find_resume_tag(run_dir)
    for step in (1, 2, 3):
        assert f"step_0000000{step}" in str(raised.value)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoint.load(None, run_dir)


def test_no_step_folder_means_a_first_start(tmp_path):
    assert checkpoint.find_resume_tag(tmp_path) is None
    (tmp_path / "latest").write_text("step_00000004")  # a pointer alone guards nothing
    assert checkpoint.find_resume_tag(tmp_path) is None
    with pytest.raises(ValueError, match="step_00000004.*does not exist"):
        checkpoint.find_resume_tag(tmp_path, "step_00000004")


@pytest.mark.slow
def test_checkpoints_without_manifest_are_accepted_when_all_ranks_are_there(run_dir):
    for step in (2, 3):  # as written before manifests existed
        (run_dir / f"step_0000000{step}" / MANIFEST).unlink()
    assert checkpoint.verify(run_dir, "step_00000003") is None
    (run_dir / "step_00000003" / "extra_rank00001.pt").unlink()
    assert "extra_rank00001.pt is missing" in checkpoint.verify(run_dir, "step_00000003")
    (run_dir / "latest").unlink()
    with pytest.warns(UserWarning, match="missing"):
        assert checkpoint.find_resume_tag(run_dir) == "step_00000002"
    state = torch.load(run_dir / "step_00000002" / "extra_rank00001.pt", weights_only=False)
    assert state["extra"] == {"data": {"at": 2}} and state["world_size"] == 2
