"""Weights & Biases adapter: one small object the trainer logs through, whatever the mode and rank.

Steps are the trainer's optimizer steps and stay monotonic across resumes. Rule: a step below the
last logged step of this session, or at or below the last step an earlier session of the same run
wrote, is dropped, with one warning per session (W&B itself drops such steps online; dropping
here makes offline and online runs, and the metrics JSONL, agree). Repeating the current step is
allowed: W&B merges the metrics into that step's row (train and eval metrics of one step).
"""

from __future__ import annotations

import secrets
import string
import time
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from dmlscale.monitor.steps import StepGuard, plain_value
from dmlscale.monitor.wandb_records import last_logged_step, run_log_files, wait_for_exit_record

MODES = ("online", "offline", "disabled")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """An 8-character id of lowercase letters and digits, as W&B's own ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _wait_for_a_new_session_folder(wandb_dir: Path, run_id: str) -> None:
    """W&B names a session's folder `<mode>-run-<local start second>-<id>`; a second session of the same
    run within the same second would reuse, and overwrite, the first one's transaction log. Wait for
    the next second when the newest folder of this run is from the current second."""
    folders = run_log_files(wandb_dir, run_id)
    if not folders:
        return
    newest = folders[-1].parent.name.split("run-", 1)[1][: len("YYYYmmdd_HHMMSS")]
    while datetime.now().strftime("%Y%m%d_%H%M%S") <= newest:
        time.sleep(0.05)


class WandbRun:
    """A W&B run that only rank 0 opens; every method is a no-op on other ranks and when disabled.

    `run_id`: None starts a new run (an id is generated once and kept in `.run_id`, which the trainer
    stores in checkpoints); the stored id resumes that run (resume="allow"). W&B's files go under
    `run_dir/wandb`. Offline mode never touches the network; `wandb sync run_dir/wandb/offline-run-*`
    uploads later. `system_metrics=False` turns off W&B's hardware sampling, console capture and
    machine info (quick start-up for tests and tiny runs).
    """

    def __init__(self, mode: str, *, project: str, run_dir: str | Path, run_id: str | None = None,
                 config: Mapping | None = None, rank: int = 0, system_metrics: bool = True,
                 name: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"WandbRun: mode must be one of {MODES}, got {mode!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"WandbRun: rank must be an int >= 0, got {rank!r}")
        if run_id is not None and (not run_id or any(c not in _ID_ALPHABET + "-_" for c in run_id.lower())):
            raise ValueError(f"WandbRun: run_id must be letters, digits, '-' or '_', got {run_id!r}")
        self.mode, self.rank = mode, rank
        self.active = rank == 0 and mode != "disabled"
        self.run_id = run_id if run_id is not None or rank != 0 else new_run_id()
        self._run = None
        floor = None
        if self.active:
            wandb_dir = Path(run_dir) / "wandb"
            floor = last_logged_step(wandb_dir, self.run_id)
            self._run = self._init(project, Path(run_dir), dict(config or {}), system_metrics, name,
                                   resuming=run_id is not None)
            if self._run.resumed:  # online: the server knows the last step even if local files are gone
                server_last = self._run.step - 1
                floor = server_last if floor is None else max(floor, server_last)
        self._steps = StepGuard("WandbRun", floor)

    def _init(self, project, run_dir, config, system_metrics, name, resuming):
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_a_new_session_folder(run_dir / "wandb", self.run_id)
        quiet = {} if system_metrics else dict(
            console="off", x_disable_stats=True, x_disable_machine_info=True, x_disable_meta=True,
            x_save_requirements=False)
        settings = wandb.Settings(silent=True, disable_git=True, save_code=False, **quiet)
        return wandb.init(mode=self.mode, project=project, dir=str(run_dir), id=self.run_id, name=name,
                          resume="allow" if resuming else None, config=config, settings=settings)

    @property
    def num_dropped(self) -> int:
        """How many log calls were dropped because their step went back."""
        return self._steps.num_dropped

    @property
    def last_step(self) -> int | None:
        """The last step logged, here or by an earlier session of this run (None: nothing yet)."""
        return self._steps.last if self._steps.last is not None else self._steps.floor

    def log(self, metrics: Mapping[str, object], step: int) -> bool:
        """Log `metrics` at `step`; False (and a warning) when the step goes back and is dropped."""
        if not self._steps.accept(step):
            return False
        if self._run is not None:
            self._run.log({key: plain_value(value) for key, value in metrics.items()}, step=step)
        return True

    def log_images(self, paths: Iterable[str | Path], step: int, *, prefix: str = "plots/") -> bool:
        """Log image files (the PNG plots) under `prefix + file stem` at `step`."""
        paths = [Path(path) for path in paths]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise ValueError(f"WandbRun.log_images: no such files {missing}")
        if self._run is None:
            return self._steps.accept(step)
        import wandb

        return self.log({prefix + path.stem: wandb.Image(str(path)) for path in paths}, step)

    def finish(self, *, timeout_s: float = 30.0) -> None:
        """Close the run and wait (up to `timeout_s`) until its transaction log is complete on disk,
        so that a resume, even in this process, sees every step; safe to call twice."""
        if self._run is None:
            return
        sync_file = self._run.settings.sync_file
        self._run.finish()
        self._run = None
        if sync_file and not wait_for_exit_record(sync_file, timeout_s=timeout_s):
            warnings.warn(f"WandbRun.finish: {sync_file} was not complete after {timeout_s} s", stacklevel=2)

    def __enter__(self) -> WandbRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()
