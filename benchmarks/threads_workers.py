"""Training speed of `dmlscale train` per (torch threads, loader workers) setting, for choosing the defaults.

Run:  .venv/bin/python benchmarks/threads_workers.py [--settings 1:0 2:0 2:1 1:1] [--rounds 2] [--steps 60]
          [--config quickstart] [--data-root data/digits]

Each setting THREADS:WORKERS is one short real run of the recipe (train.threads=THREADS,
data.num_workers=WORKERS, no evaluation, no export, no plots) in a fresh process; the settings alternate
within each round, so that load from other processes hits them alike. The table gives, per setting,
the median over rounds of the samples per second and the data share of the step time that the trainer
logs (perf/ in metrics.jsonl), leaving out the first log interval (start-up), and the ratio to the first
setting. Threads 0 is the default: the cores this process may use. 0 and 1 workers read the same samples
in the same order, so those two settings train the same run. Each run starts DeepSpeed (a few seconds);
with the defaults on 2 cores the whole benchmark takes about 4 x 2 x (60 steps x 0.2 s + 15 s) = 4 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_setting(text: str) -> tuple[int, int]:
    try:
        threads, workers = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--settings: {text!r} is not THREADS:WORKERS (two ints, e.g. 2:0)") from None
    if threads < 0 or workers < 0:
        raise ValueError(f"--settings: {text!r} has a negative count")
    return threads, workers


def run(config: str, data_root: str, steps: int, threads: int, workers: int, run_dir: Path) -> dict[str, float]:
    """One run; the mean of its perf/ metrics over the log intervals after the first."""
    command = [sys.executable, "-m", "dmlscale.cli", "train", "--config", config, f"run_dir={run_dir}",
               f"data.root={data_root}", f"train.steps={steps}", f"train.threads={threads}",
               f"data.num_workers={workers}", "train.log_every=10", "eval.every=0", "eval.zero_shot=false",
               "eval.retrieval=false", "checkpoint.export=false", "monitor.plots=false", "monitor.console=false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, check=True, capture_output=True, env=env)
    logged = [json.loads(line)["metrics"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "perf/samples_per_s_rank" in m][1:]
    return {key: statistics.mean(m[key] for m in logged) for key in ("perf/samples_per_s_rank", "perf/data_fraction")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["1:0", "2:0", "2:1", "1:1"], help="THREADS:WORKERS")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="steps per run (logged every 10; >= 20)")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--data-root", default="data/digits", help="the digits shards (written there if missing)")
    args = parser.parse_args()
    settings = [parse_setting(text) for text in args.settings]
    if args.rounds < 1 or args.steps < 20:
        raise ValueError(f"--rounds must be >= 1 and --steps >= 20, got {args.rounds} and {args.steps}")

    results: dict[tuple[int, int], list[dict]] = {setting: [] for setting in settings}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for threads, workers in settings:
                run_dir = Path(folder) / f"t{threads}w{workers}r{round_index}"
                results[(threads, workers)].append(run(args.config, args.data_root, args.steps, threads, workers,
                                                       run_dir))
    load_after = os.getloadavg()
    print(f"recipe {args.config}, {args.steps} steps per run, {args.rounds} rounds, "
          f"{len(os.sched_getaffinity(0))} usable cores; load average (1, 5, 15 min) before "
          f"{tuple(round(v, 2) for v in load_before)}, after {tuple(round(v, 2) for v in load_after)}")
    print("\n| threads | workers | samples/s | data share | vs first |\n| --- | --- | --- | --- | --- |")
    first = None
    for (threads, workers), runs in results.items():
        rate = statistics.median(r["perf/samples_per_s_rank"] for r in runs)
        share = statistics.median(r["perf/data_fraction"] for r in runs)
        first = first or rate
        print(f"| {threads or 'default'} | {workers} | {rate:.1f} | {share:.0%} | {rate / first:.3f}x |")


if __name__ == "__main__":
    main()
