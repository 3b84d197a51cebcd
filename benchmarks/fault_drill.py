"""Fault drill: kill -9 a random worker at a random step under torchrun with restarts, N times; a table.

    .venv/bin/python benchmarks/fault_drill.py [--runs 10] [--seed 0] [--steps 40] [--every 10]
        [--max-restarts 2] [--topologies single,multi] [--work-dir DIR]

Each run trains the quickstart-sized tiny recipe (dml-tiny-vit on the digits shards, ledger on) through
launch/torchrun_single_node.sh (2 ranks) or launch/torchrun_multi_node.sh (2 "nodes" x 2 processes on
loopback), waits until metrics.jsonl shows the chosen step, and kill -9's the worker with the chosen RANK.
Per run it reports: finished (exit 0 at the final step), restarts used (resumes the trainer printed), the
longest wait between two newly logged steps (the kill -> restart -> resume gap), whether the final
checkpoint's consolidated weights equal an uninterrupted run's bitwise, and whether the sample ledger
(dmlscale.train.ledger.check_ledger) records each step on every rank with the same samples as the
uninterrupted run. Not part of the test suite: one run takes a minute or more on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                      "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID")
RUN_TIMEOUT_S = 900


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return dict(env, PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)


def _args(run_dir: Path, data_root: Path, steps: int, every: int) -> list[str]:
    return [f"run_dir={run_dir}", f"data.root={data_root}", "model.name=dml-tiny-vit", "data.batch_size=8",
            f"train.steps={steps}", "optim.warmup_steps=2", "eval.every=0", "train.threads=1",
            "eval.retrieval=false", "eval.max_samples=64", "monitor.console=false", "monitor.plots=false",
            "checkpoint.export=false", f"checkpoint.every={every}", "checkpoint.keep_last=0", "train.log_every=1",
            "train.ledger=true", "train.group_timeout_s=120"]


def _launch(topology: str, args: list[str], log_dir: Path, max_restarts: int) -> list[subprocess.Popen]:
    """The torchrun agent(s): one for single, two "nodes" for multi."""
    from dmlscale.distributed.env import free_port

    if topology == "single":
        env, script, count = _env(NPROC="2", MAX_RESTARTS=str(max_restarts)), "torchrun_single_node.sh", 1
    else:
        env = _env(RDZV_ENDPOINT=f"127.0.0.1:{free_port()}", NNODES="2", NPROC_PER_NODE="2", LOCAL_ADDR="127.0.0.1",
                   RDZV_ID=f"drill-{log_dir.name}", MAX_RESTARTS=str(max_restarts), GLOO_SOCKET_IFNAME="lo")
        script, count = "torchrun_multi_node.sh", 2
    agents = []
    for node in range(count):
        log = open(log_dir / f"node{node}.log", "w")
        agents.append(subprocess.Popen(["bash", str(REPO / "launch" / script), *args], env=env, cwd=log_dir,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return agents


def _workers(agent_pids: list[int]) -> dict[int, int]:
    """RANK -> pid of every worker, children of the agents (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent not in agent_pids:
                continue
            for item in (entry / "environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
        except (OSError, ValueError):
            continue
    return found


def _logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return max(steps)


def run_once(topology: str, run_dir: Path, data_root: Path, *, steps: int, every: int, max_restarts: int,
             kill: tuple[int, int] | None) -> dict:
    """One training run; `kill` = (rank, step) to kill -9 that worker once that step is logged."""
    run_dir.mkdir(parents=True)
    agents = _launch(topology, _args(run_dir / "run", data_root, steps, every), run_dir, max_restarts)
    started = last_progress = time.monotonic()
    longest_wait, seen, killed = 0.0, 0, None
    try:
        while any(agent.poll() is None for agent in agents):
            now = time.monotonic()
            assert now - started < RUN_TIMEOUT_S, f"run {run_dir.name} still going after {RUN_TIMEOUT_S} s"
            step = _logged_step(run_dir / "run")
            if step > seen:
                if seen > 0:  # from the first logged step on: start-up is not a wait
                    longest_wait = max(longest_wait, now - last_progress)
                seen, last_progress = step, now
            if kill is not None and killed is None and seen >= kill[1]:
                pid = _workers([agent.pid for agent in agents]).get(kill[0])
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed = seen
            time.sleep(0.1)
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    output = "".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("node*.log")))
    summary_path = run_dir / "run" / "summary.json"
    finished = all(agent.returncode == 0 for agent in agents) and summary_path.is_file() and \
        json.loads(summary_path.read_text())["step"] == steps
    return {"finished": finished, "restarts": output.count("dmlscale train: resuming"),
            "killed_at": killed, "longest_wait_s": longest_wait, "seconds": time.monotonic() - started,
            "exit": [agent.returncode for agent in agents], "tail": output[-3000:]}


def weights(run_dir: Path, steps: int):
    from dmlscale.train.export import consolidated_state_dict

    return consolidated_state_dict(run_dir / "run" / "checkpoints", f"step_{steps:08d}")


def ledger_view(run_dir: Path):
    """What the sample ledger says was trained, in a comparable form (None when there is no ledger)."""
    try:
        from dmlscale.train.ledger import check_ledger
    except ImportError:  # HOOK: the ledger module is not there: nothing to check
        return None
    report = check_ledger(run_dir / "run")
    return (report.steps, report.ranks_per_step,
            {epoch: (e.num_trained, e.num_distinct, sorted(e.keys)) for epoch, e in report.epochs.items()})


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--max-restarts", type=int, default=2)
    parser.add_argument("--topologies", default="single,multi")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fault_drill_"))
    data_root = work / "digits"
    if not (data_root / "train").is_dir():
        from dmlscale.cli import main as cli_main

        assert cli_main(["shards", "--source", "digits", "--output", str(data_root), "--samples-per-shard", "300",
                         "--no-progress"]) == 0
    rng = random.Random(args.seed)
    rows = []
    for topology in args.topologies.split(","):
        world = 2 if topology == "single" else 4
        reference_dir = work / f"{topology}_reference"
        if not (reference_dir / "run" / "summary.json").is_file():
            reference = run_once(topology, reference_dir, data_root, steps=args.steps, every=args.every,
                                 max_restarts=0, kill=None)
            if not reference["finished"]:
                print(f"{topology}: the uninterrupted reference run failed:\n{reference['tail']}")
                return 1
        reference_weights, reference_ledger = weights(reference_dir, args.steps), ledger_view(reference_dir)
        for index in range(args.runs):
            kill = (rng.randrange(world), rng.randrange(1, args.steps))
            run_dir = work / f"{topology}_{index:02d}"
            result = run_once(topology, run_dir, data_root, steps=args.steps, every=args.every,
                              max_restarts=args.max_restarts, kill=kill)
            same = None
            ledger = "hook" if reference_ledger is None else None
            if result["finished"]:
                final = weights(run_dir, args.steps)
                same = final.keys() == reference_weights.keys() and all(
                    torch.equal(final[k], reference_weights[k]) for k in final)
                if reference_ledger is not None:
                    ledger = "same" if ledger_view(run_dir) == reference_ledger else "DIFFERS"
            rows.append((topology, index, kill, result, same, ledger))
            print(f"{topology} run {index}: kill -9 rank {kill[0]} at step {kill[1]}: finished={result['finished']} "
                  f"restarts={result['restarts']} longest_wait={result['longest_wait_s']:.1f}s bitwise={same} "
                  f"ledger={ledger} exit={result['exit']} ({result['seconds']:.0f} s)", flush=True)
            if not result["finished"]:
                print(result["tail"], flush=True)
    print()
    print(f"| topology | run | killed rank@step | finished | restarts | longest wait (s) | final weights bitwise "
          f"= uninterrupted | ledger | run (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for topology, index, kill, result, same, ledger in rows:
        print(f"| {topology} | {index} | {kill[0]}@{kill[1]} | {'yes' if result['finished'] else 'NO'} | "
              f"{result['restarts']} | {result['longest_wait_s']:.1f} | {same} | {ledger} | {result['seconds']:.0f} |")
    for topology in args.topologies.split(","):
        mine = [r for r in rows if r[0] == topology]
        print(f"{topology}: {sum(r[3]['finished'] for r in mine)}/{len(mine)} finished, "
              f"{sum(bool(r[4]) for r in mine)}/{len(mine)} bitwise equal, "
              f"longest wait max {max((r[3]['longest_wait_s'] for r in mine), default=0):.1f} s")
    print(f"runs kept in {work}")
    return 0 if all(r[3]["finished"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
