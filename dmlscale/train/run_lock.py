"""One job per run folder: a lock file created atomically, naming its holder.

run_dir/.dmlscale.lock is created with O_CREAT | O_EXCL and holds JSON {host, pid, pid_start_time,
started_at, job_id, token}. pid_start_time is the process's start time from /proc/<pid>/stat (clock ticks
since boot), so a reused pid is not mistaken for the holder. A lock is taken over when
- its holder is on this host and dead (no such pid, or the pid now belongs to a later process):
  stale, with a warning naming the old holder;
- it carries our own non-empty job_id: a previous attempt of this job (torchrun restart, Slurm
  requeue, possibly on another host), with a log line.
Otherwise RunLockedError at once. token (random) tells two locks of one process apart, so release()
removes only the very record this RunLock wrote. Take-over is race-free: the stale file is renamed to a name only
this taker uses (rename is atomic, so of two takers one gets it), checked again, and removed; then
both compete for O_EXCL again, which exactly one wins.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
import warnings
from pathlib import Path

LOCK_NAME = ".dmlscale.lock"
LOG = logging.getLogger("dmlscale.train")


class RunLockedError(ValueError):
    """Another live job holds the run folder."""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks after boot); None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after it follow the last ')'
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _describe(record: dict, path: Path) -> str:
    return (f"host {record.get('host')!r}, pid {record.get('pid')} (started {record.get('pid_start_time')}), "
            f"since {record.get('started_at')}, job id {record.get('job_id') or '(none)'!r}, lock file {str(path)!r}")


class RunLock:
    """Exclusive use of run_dir by one job: `with RunLock(run_dir, job_id=...):` or acquire()/release()."""

    def __init__(self, run_dir: str | Path, *, job_id: str = ""):
        if not isinstance(job_id, str):
            raise ValueError(f"RunLock: job_id must be a str, got {job_id!r}")
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.job_id = job_id
        self.record: dict | None = None

    def _own_record(self) -> dict:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "pid_start_time": process_start_time(pid),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "job_id": self.job_id,
                "token": uuid.uuid4().hex}

    def _try_create(self, record: dict) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _read(self, path: Path) -> dict | None:
        """The holder's record; {} for a file being written or corrupt; None when gone."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            return record if isinstance(record, dict) else {}
        except ValueError:
            return {}

    def _why_take_over(self, record: dict) -> str | None:
        """'stale' or 'same job' when the lock may be taken over, else None."""
        if self.job_id and record.get("job_id") == self.job_id:
            return "same job"
        if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
            started = process_start_time(record["pid"])
            if started is None or started != record.get("pid_start_time"):
                return "stale"
        return None

    def acquire(self) -> "RunLock":
        if self.record is not None:
            raise ValueError(f"RunLock: {str(self.path)!r} is already held by this RunLock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = self._own_record()
        for _ in range(20):  # each round either wins, refuses, or removes a lock that may be taken over
            if self._try_create(record):
                self.record = record
                return self
            holder = self._read(self.path)
            if holder is None:
                continue  # released meanwhile
            if not holder:  # created but not yet written: its creator is alive right now
                time.sleep(0.05)
                holder = self._read(self.path)
                if holder is None:
                    continue
                if not holder:
                    raise RunLockedError(f"run folder {str(self.run_dir)!r} is locked: {str(self.path)!r} exists "
                                         f"but holds no readable record; remove it if no job uses this folder")
            reason = self._why_take_over(holder)
            if reason is None:
                raise RunLockedError(f"run folder {str(self.run_dir)!r} is in use by another job: "
                                     f"{_describe(holder, self.path)}")
            self._take_over(holder, reason)
        raise RunLockedError(f"run folder {str(self.run_dir)!r}: could not take {str(self.path)!r} (contended)")

    def _take_over(self, holder: dict, reason: str) -> None:
        grabbed = self.path.with_name(f"{LOCK_NAME}.takeover.{socket.gethostname()}.{os.getpid()}")
        try:
            os.rename(self.path, grabbed)
        except FileNotFoundError:
            return  # another starter took it over first; compete for O_EXCL again
        taken = self._read(grabbed)
        if taken != holder:  # the file changed between reading and renaming: someone else's fresh lock
            try:
                os.link(grabbed, self.path)  # put it back unless a new lock already exists
            except FileExistsError:
                pass
            grabbed.unlink(missing_ok=True)
            return
        grabbed.unlink(missing_ok=True)
        if reason == "stale":
            warnings.warn(f"run folder {str(self.run_dir)!r}: taking over the stale lock of a dead process "
                          f"({_describe(holder, self.path)})", stacklevel=3)
        else:
            LOG.info("run folder %s: taking over the lock of a previous attempt of job %r (%s)",
                     self.run_dir, self.job_id, _describe(holder, self.path))

    def release(self) -> None:
        """Remove the lock file if it still holds our record (never another job's)."""
        if self.record is None:
            return
        if self._read(self.path) == self.record:
            self.path.unlink(missing_ok=True)
        self.record = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
