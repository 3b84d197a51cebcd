"""The run-folder lock against real processes: a live holder, a dead one, a reused pid, the same job
restarted, and two starters racing for one folder."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from dmlscale.train.run_lock import LOCK_NAME, RunLock, RunLockedError, process_start_time

HOLD = ("import sys, time\nfrom dmlscale.train.run_lock import RunLock\n"
        "lock = RunLock(sys.argv[1], job_id=sys.argv[2]).acquire()\nprint('held', flush=True)\n"
        "time.sleep(float(sys.argv[3]))\n")


def _holder(run_dir, job_id: str = "", seconds: float = 60.0) -> subprocess.Popen:
    """A real process that takes the lock and keeps it (without releasing when killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), job_id, str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _record(run_dir) -> dict:
    return json.loads((run_dir / LOCK_NAME).read_text())


def test_lock_file_names_its_holder_and_release_removes_it(tmp_path):
    with RunLock(tmp_path, job_id="job-7") as lock:
        record = _record(tmp_path)
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["pid_start_time"] == process_start_time(os.getpid()) is not None
        assert record["job_id"] == "job-7" and record["started_at"]
        assert lock.record == record
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_holder_fails_at_once_naming_the_holder(tmp_path):
    holder = _holder(tmp_path, "job-A")
    try:
        started = time.perf_counter()
        with pytest.raises(RunLockedError) as raised:
            RunLock(tmp_path, job_id="job-B").acquire()
        assert time.perf_counter() - started < 1.0
        message = str(raised.value)
        for part in (socket.gethostname(), f"pid {holder.pid}", str(process_start_time(holder.pid)), "job-A",
                     str(tmp_path / LOCK_NAME)):
            assert part in message, (part, message)
        assert isinstance(raised.value, ValueError)
        assert _record(tmp_path)["pid"] == holder.pid  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    holder = _holder(tmp_path)
    holder.kill()  # dies holding the lock, as a crashed job does
    holder.wait()
    with pytest.warns(UserWarning, match=f"stale lock.*pid {holder.pid}"):
        lock = RunLock(tmp_path).acquire()
    assert _record(tmp_path)["pid"] == os.getpid()
    lock.release()


def test_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    # a record naming this live pid but another start time: the pid was reused since the lock was written
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start_time": process_start_time(os.getpid()) - 1,
              "started_at": "2020-01-01T00:00:00", "job_id": ""}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="stale lock"):
        with RunLock(tmp_path):
            assert _record(tmp_path)["pid_start_time"] == process_start_time(os.getpid())


def test_same_job_id_takes_over_from_its_previous_attempt(tmp_path, caplog):
    holder = _holder(tmp_path, "slurm-123")  # still alive: torchrun restarted us, or Slurm requeued elsewhere
    try:
        with pytest.raises(RunLockedError):
            RunLock(tmp_path, job_id="slurm-999").acquire()
        with caplog.at_level(logging.INFO, logger="dmlscale.train"):
            lock = RunLock(tmp_path, job_id="slurm-123").acquire()
        assert any("previous attempt" in r.getMessage() and str(holder.pid) in r.getMessage() for r in caplog.records)
        assert _record(tmp_path)["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_on_another_host_is_respected(tmp_path):
    record = {"host": "some-other-node", "pid": 1, "pid_start_time": 1, "started_at": "x", "job_id": "j1"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunLockedError, match="some-other-node"):
        RunLock(tmp_path, job_id="j2").acquire()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    first = RunLock(tmp_path, job_id="job-1").acquire()
    second = RunLock(tmp_path, job_id="job-1").acquire()  # a restart of the same job took it over
    first.release()
    assert _record(tmp_path)["pid"] == os.getpid() and (tmp_path / LOCK_NAME).exists()
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_bad_job_id_is_refused():
    with pytest.raises(ValueError, match="job_id must be a str, got 5"):
        RunLock("/tmp", job_id=5)


def _race(run_dir, start, wins, job_id):
    start.wait()
    try:
        RunLock(run_dir, job_id=job_id).acquire()
        wins.put(os.getpid())
    except RunLockedError:
        wins.put(None)
    time.sleep(0.5)  # keep holding (alive) while the other starter looks


@pytest.mark.parametrize("stale_before", [False, True])
def test_two_simultaneous_starters_exactly_one_wins(tmp_path, stale_before):
    context = multiprocessing.get_context("spawn")
    for round_index in range(6):
        run_dir = tmp_path / f"round{round_index}"
        run_dir.mkdir()
        if stale_before:  # both see a dead holder and both try to take it over
            dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True)
            record = {"host": socket.gethostname(), "pid": int(dead.stdout), "pid_start_time": 0,
                      "started_at": "x", "job_id": ""}
            (run_dir / LOCK_NAME).write_text(json.dumps(record))
        start, wins = context.Barrier(2), context.Queue()
        processes = [context.Process(target=_race, args=(run_dir, start, wins, f"job-{i}")) for i in range(2)]
        for process in processes:
            process.start()
        outcomes = [wins.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        winners = [pid for pid in outcomes if pid is not None]
        assert len(winners) == 1, outcomes
        assert winners[0] in {p.pid for p in processes}
