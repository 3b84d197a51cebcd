"""Process-group formation and step heartbeats at 2 real ranks (separate processes, real signals).

This file is also the worker: `python tests/distributed/test_env_formation.py MODE TIMEOUT_S` reads its
rank from torchrun-style environment variables, forms the group with dmlscale's init_process_group and
then does what MODE says, printing what it saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "SLURM_PROCID", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
                      "TORCHELASTIC_RUN_ID")


def _worker(mode: str, timeout_s: float) -> int:
    import torch
    import torch.distributed as dist

    from dmlscale.distributed import StepHeartbeat, init_process_group, world_info_from_env

    info = world_info_from_env()
    init_process_group(info, backend="gloo", timeout_s=timeout_s)
    print(f"rank {info.rank}: formed", flush=True)
    if mode == "form":
        dist.barrier()
    elif mode == "new_group_alone":  # only rank 0 makes a sub-group, as a DeepSpeed rank whose peer is stuck
        if info.rank == 0:
            start = time.monotonic()
            try:
                dist.new_group([0, 1])
            except Exception as error:  # the test asserts on the time and the printed type
                print(f"rank 0: new_group failed after {time.monotonic() - start:.1f} s: {type(error).__name__}",
                      flush=True)
                os._exit(3)
            print("rank 0: new_group formed alone", flush=True)
        else:
            time.sleep(3 * timeout_s)
        os._exit(0)
    elif mode == "steps":  # beat and all-reduce each step until a collective times out
        heartbeat = StepHeartbeat.for_current_group()
        step_file = Path(os.environ["STEP_FILE"])
        for step in range(1, 10_000):
            heartbeat.beat(step)
            try:
                dist.all_reduce(torch.ones(4))
            except Exception as error:  # a timed-out collective: the trainer re-raises with this message
                print(f"rank {info.rank}: {type(error).__name__} at step {step}: "
                      f"{heartbeat.stalled_ranks_message(timeout_s=5)}", flush=True)
                os._exit(4)
            if info.rank == 1:
                step_file.write_text(str(step))
            time.sleep(0.05)
    dist.destroy_process_group()
    return 0


def _env(rank: int, port: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return dict(env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO), **extra)


def _start(rank: int, port: int, mode: str, timeout_s: float, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, mode, str(timeout_s)], env=_env(rank, port, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _finish(process: subprocess.Popen, who: str, timeout: float) -> str:
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{who} still running after {timeout:.0f} s: {process.communicate()[0][-2000:]}")


def test_a_group_whose_second_rank_never_starts_fails_naming_rank_1():
    from dmlscale.distributed.env import free_port

    port = free_port()
    start = time.monotonic()
    rank0 = _start(0, port, "form", 4)
    output = _finish(rank0, "rank 0 (alone in a group of 2)", timeout=60)
    elapsed = time.monotonic() - start
    assert rank0.returncode != 0, output
    assert "rank 0: the process group of 2 ranks" in output and "did not form within 4 s" in output, output
    assert "rank 1 never joined" in output and f"store at 127.0.0.1:{port}" in output, output
    assert elapsed < 4 + 25, f"took {elapsed:.1f} s for a 4 s timeout"  # interpreter start-up included


def test_a_late_rank_within_the_budget_still_forms():
    from dmlscale.distributed.env import free_port

    port = free_port()
    rank0 = _start(0, port, "form", 60)
    time.sleep(3)  # rank 1 starts later, as a slow node would
    rank1 = _start(1, port, "form", 60)
    outputs = [_finish(p, f"rank {r}", timeout=120) for r, p in enumerate((rank0, rank1))]
    assert rank0.returncode == 0 and rank1.returncode == 0, outputs
    assert "rank 0: formed" in outputs[0] and "rank 1: formed" in outputs[1]


def test_a_restart_on_the_agents_store_is_not_poisoned_by_the_dead_attempts_keys():
    """torchrun's agent store outlives the workers: restart 1 forms on the same store after restart 0's
    ranks formed there and were killed -9 (torch's own keys "default_pg/..." would still hold their addresses)."""
    import datetime

    import torch.distributed as dist

    from dmlscale.distributed.env import free_port

    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, multi_tenant=True,
                          timeout=datetime.timedelta(seconds=30))  # this test process plays the agent
    agent_env = dict(TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RUN_ID="drill")
    first = [_start(r, port, "steps", 30, TORCHELASTIC_RESTART_COUNT="0", STEP_FILE=os.devnull, **agent_env)
             for r in range(2)]
    deadline = time.monotonic() + 60
    while not agent.check(["dmlscale/drill/gen_1/try_0/beat/0", "dmlscale/drill/gen_1/try_0/beat/1"]):
        assert time.monotonic() < deadline, "the first start's ranks never beat: " + str([p.poll() for p in first])
        assert all(p.poll() is None for p in first), [p.communicate()[0] for p in first]
        time.sleep(0.1)
    for process in first:
        process.kill()  # kill -9, as a crashed worker
        process.communicate(timeout=30)
    second = [_start(r, port, "form", 30, TORCHELASTIC_RESTART_COUNT="1", **agent_env) for r in range(2)]
    outputs = [_finish(p, f"restart 1 rank {r}", timeout=90) for r, p in enumerate(second)]
    assert [p.returncode for p in second] == [0, 0], outputs
    assert agent.check(["dmlscale/drill/gen_2/try_0/outcome"])  # rank 0's second start opened generation 2
    assert agent.get("dmlscale/drill/gen_2/try_0/outcome") == b"ok"


def test_sub_groups_made_later_time_out_with_the_configured_timeout_not_30_minutes():
    from dmlscale.distributed.env import free_port

    port = free_port()
    processes = [_start(r, port, "new_group_alone", 4) for r in range(2)]
    outputs = [_finish(p, f"rank {r}", timeout=90) for r, p in enumerate(processes)]
    assert processes[0].returncode == 3, outputs[0]
    seconds = float(outputs[0].split("new_group failed after ")[1].split(" s")[0])
    assert 3 <= seconds < 20, outputs[0]


def test_a_stopped_rank_is_named_by_the_other_ranks_timeout(tmp_path):
    from dmlscale.distributed.env import free_port

    port, step_file = free_port(), tmp_path / "rank1_step"
    processes = [_start(r, port, "steps", 4, STEP_FILE=str(step_file)) for r in range(2)]
    try:
        deadline = time.monotonic() + 90
        while not (step_file.exists() and step_file.read_text() and int(step_file.read_text()) >= 5):
            assert time.monotonic() < deadline, "rank 1 never reached step 5"
            assert all(p.poll() is None for p in processes), [p.communicate()[0] for p in processes]
            time.sleep(0.1)
        os.kill(processes[1].pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        output = _finish(processes[0], "rank 0 (its peer stopped)", timeout=60)
        waited = time.monotonic() - stopped_at
    finally:
        processes[1].kill()  # SIGKILL ends a stopped process too
        processes[1].communicate(timeout=30)
    assert processes[0].returncode == 4, output
    assert "rank 1 last reached step" in output, output
    assert "rank 0 at step" in output, output
    assert waited < 4 + 5 + 20, f"rank 0 reported after {waited:.0f} s"


def test_the_stalled_rank_is_the_one_not_waiting_else_the_one_behind_else_the_oldest_beat():
    from dmlscale.distributed.heartbeat import describe_beats

    beats = {0: (13, 995.0), 1: (12, 690.0), 2: (13, 996.0)}
    assert describe_beats(beats, {0, 2}, now=1000.0) == \
        "rank 1 last reached step 12, 310 s ago; ranks 0, 2 at step 13 (waiting in the collective)"
    assert describe_beats(beats, {0, 1, 2}, now=1000.0).startswith("rank 1 last reached step 12, 310 s ago")
    same_step = {0: (5, 990.0), 1: (5, 900.0)}
    assert describe_beats(same_step, {0, 1}, now=1000.0).startswith("rank 1 last reached step 5, 100 s ago")
    assert describe_beats({0: (3, 999.0), 1: None}, {0}, now=1000.0).startswith("rank 1 never reported a step")


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], float(sys.argv[2])))


def test_threads_follow_the_cpu_affinity_not_the_machine():
    """A rank pinned to one core (as Slurm's cpusets or taskset do) gets one thread, whatever the node has."""
    import subprocess
    import sys

    code = ("import os\nfrom dmlscale.distributed.env import threads_per_rank, usable_cores\n"
            "full = usable_cores()\nassert full == len(os.sched_getaffinity(0)), full\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "print(full, usable_cores(), threads_per_rank(1), threads_per_rank(4))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    full, pinned, one_rank, four_ranks = map(int, out.stdout.split())
    assert (pinned, one_rank, four_ranks) == (1, 1, 1)
    assert full >= 1
