"""Shared measurement for the benchmarks: peak extra memory and time of one step, in a fresh process.

A benchmark script re-runs itself with `--child ...`; the child builds its inputs, warms up, then
`measure_step` reads resource.getrusage(RUSAGE_SELF).ru_maxrss before and after the first step (the
difference is the step's peak extra resident memory) and keeps the fastest of `repeats` runs.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

BYTES_PER_GIB = 1024**3


def measure_step(step, repeats: int) -> dict:
    """Run step() `repeats` times; peak extra RSS of the first run (bytes) and the fastest time (s)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    step()
    seconds = [time.perf_counter() - start]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(repeats - 1):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"extra_bytes": (rss_after - rss_before) * 1024, "seconds": min(seconds), "all_seconds": seconds}


def report(result: dict) -> None:
    """The child's last stdout line: one JSON object."""
    print(json.dumps(result))


def run_child(script: str, child_args: list[str]) -> dict:
    """Run `script --child ...` in a fresh interpreter and return its JSON result (or {'error': ...})."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, os.path.abspath(script), "--child", *child_args],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {' '.join(done.stderr.strip().splitlines()[-1:])}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def fmt_mib(num_bytes: float) -> str:
    return f"{num_bytes / 1024**2:,.0f} MiB"
