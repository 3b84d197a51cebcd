"""Before a session touches its run folder: take the folder's lock, then decide whether and how to resume.

Nothing in the run folder is written until both succeed, on every rank alike: rank 0 takes the lock
and tells the others the outcome; every rank reads the same checkpoint files and so reaches the same
resume decision (or raises the same error).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dmlscale.distributed.collectives import all_gather_objects
from dmlscale.train import checkpoint
from dmlscale.train.config import Config, ConfigWarning
from dmlscale.train.schema import section_from_dict
from dmlscale.train.resume_guard import ResumeChanges, compare
from dmlscale.train.run_lock import RunLock, RunLockedError

CHECKPOINTS = "checkpoints"
RESULTS = ("summary.json", "export/")  # what a finished run leaves beside its checkpoints


def lock_run_folder(run_dir: Path, *, rank: int, job_id: str) -> RunLock | None:
    """Rank 0 takes the run folder's lock; every rank raises RunLockedError when it is held elsewhere."""
    lock, refusal = None, None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir, job_id=job_id)
        try:
            lock.acquire()
        except RunLockedError as error:
            lock, refusal = None, str(error)
    refusal = all_gather_objects(refusal)[0]
    if refusal is not None:
        raise RunLockedError(refusal)
    return lock


def current_form(saved_config: dict) -> dict:
    """A checkpoint's config in this release's keys (an earlier release's `loss.name: triplet` becomes
    `loss.name: TripletMarginLoss` with its options), so that only real changes are compared."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        try:
            return section_from_dict(Config, saved_config).to_dict()
        except ValueError:
            return saved_config  # keys this release no longer reads: compared as saved, so refused by name


@dataclass
class ResumePlan:
    tag: str | None  # None: a fresh start
    step: int = 0
    changes: ResumeChanges | None = None


def refuse_fresh_start_over_a_run(run_dir: str | Path) -> None:
    """A new run (no --resume) never shares a folder with another run's checkpoints or results
    (summary.json, export/): ValueError naming the folder, what it holds and what to do instead. A folder with
    only a config.yaml or metrics.jsonl (a start that failed before its first checkpoint) may be started afresh."""
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / CHECKPOINTS
    saved = sorted(checkpoint_dir.glob("step_*")) if checkpoint_dir.is_dir() else []
    held = ([f"checkpoints up to {saved[-1].name}"] if saved else []) + \
        [name for name in RESULTS if (run_dir / name.rstrip("/")).exists()]
    if not held:
        return
    resume = "continue it with --resume latest, or " if saved else ""
    raise ValueError(f"run folder {str(run_dir)!r} already holds another run ({', '.join(held)}); {resume}give "
                     f"this run its own folder with name=NAME (runs/NAME) or run_dir=DIR, or remove the folder to "
                     f"start over")


def plan_resume(config: Config, requested: str | None, *, world_size: int) -> ResumePlan:
    """The checkpoint to resume (`requested`: "latest", a tag or None) and what changed since it was saved.

    A fresh start in a folder that holds another run is refused: it would overwrite it."""
    checkpoint_dir = Path(config.run_dir) / CHECKPOINTS
    if requested is None:
        refuse_fresh_start_over_a_run(config.run_dir)
        return ResumePlan(None)
    tag = checkpoint.find_resume_tag(checkpoint_dir, requested)
    if tag is None:
        return ResumePlan(None)  # "latest" with nothing saved yet: a first start under Slurm or torchrun
    saved = torch.load(checkpoint_dir / tag / "extra_rank00000.pt", map_location="cpu", weights_only=False)
    saved_config = saved["extra"].get("config")
    changes = None
    if saved_config is not None:
        changes = compare(current_form(saved_config), config.to_dict(), saved_world_size=saved["world_size"],
                          world_size=world_size, tag=tag)
    elif saved["world_size"] != world_size:
        raise ValueError(f"checkpoint {tag!r} was saved by {saved['world_size']} ranks without its config; "
                         f"it can only resume at that world size (this run has {world_size})")
    return ResumePlan(tag, step=int(saved["step"]), changes=changes)
