"""A worker killed with kill -9 under torchrun (launch/torchrun_single_node.sh, MAX_RESTARTS=2) is restarted,
the new group forms on the agent's store, the trainer resumes from the newest complete checkpoint by itself
and the run finishes at its final step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "torchrun_single_node.sh"
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                      "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID")


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (the torchrun agent's workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def worker_with_rank(agent_pid: int, rank: int) -> int | None:
    for pid in child_pids(agent_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def tiny_run_args(run_dir: Path, digits_root: Path, *, steps: int, every: int) -> list[str]:
    return [f"run_dir={run_dir}", f"data.root={digits_root}", "model.name=dml-tiny-vit", "data.batch_size=8",
            f"train.steps={steps}", "optim.warmup_steps=1", "eval.every=0", "train.threads=1",
            "eval.retrieval=false", "eval.max_samples=64", "monitor.console=false", "monitor.plots=false",
            "checkpoint.export=false", f"checkpoint.every={every}", "train.log_every=1",
            "train.group_timeout_s=60"]


def launch_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return dict(env, PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)


@pytest.mark.slow
def test_a_worker_killed_with_sigkill_is_restarted_and_the_run_finishes(tmp_path, digits_root):
    run_dir, steps = tmp_path / "restart", 8
    log_path = tmp_path / "torchrun.log"
    with open(log_path, "w") as log:
        agent = subprocess.Popen(["bash", str(SCRIPT), *tiny_run_args(run_dir, digits_root, steps=steps, every=2)],
                                 env=launch_env(NPROC="2", MAX_RESTARTS="2"), cwd=tmp_path, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + 300
        while not latest.is_file():  # the first checkpoint (step 2) is complete: kill rank 1 now
            assert agent.poll() is None, f"torchrun ended (exit {agent.returncode}) before the first checkpoint:\n" \
                                         f"{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within 300 s:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.2)
        victim = worker_with_rank(agent.pid, 1)
        assert victim is not None, f"no worker with RANK=1 under the torchrun agent {agent.pid}"
        killed_after = latest.read_text().strip()
        os.kill(victim, signal.SIGKILL)
        try:
            agent.wait(timeout=420)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"torchrun still running 420 s after the kill:\n{log_path.read_text()[-4000:]}")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    output = log_path.read_text()
    assert agent.returncode == 0, output[-4000:]
    assert "resuming" in output and "from checkpoint step_" in output, output[-4000:]  # it resumed, not restarted
    resumed_from = int(output.split("from checkpoint step_")[1].split()[0])
    assert resumed_from >= int(killed_after.split("_")[1]), (killed_after, output[-2000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == steps and summary["world_size"] == 2
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
