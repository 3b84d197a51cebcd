"""Real gloo runs that the scaling model is checked against, and the loopback bandwidth it assumes for them.

Every run starts W real processes on this machine (tests/distributed/launch.py: a gloo group on 127.0.0.1,
ranks forked from a preloaded server), each pinned to `threads` torch threads and holding its even share of
a global batch of N pairs. A rank runs one full-size warm-up step, then one step under
process_counters.PeakMemory (peak resident memory over the RSS before it) and tcp_bytes_received (bytes
its gloo sockets received during it), then `repeats` steps after a barrier each, timed twice: the rank's
CPU time (its compute, whatever else shares the cores) and the wall time. Reported: the largest rank's
memory, bytes and CPU time, and the wall time of the slowest rank.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from process_counters import PeakMemory, release_freed_memory, tcp_bytes_received  # noqa: E402
from scaling_calibration import cpu_seconds, loss_step  # noqa: E402
from tests.distributed.launch import results, run_world  # noqa: E402


def even_share(global_pairs: int, rank: int, world_size: int) -> tuple[int, int]:
    """(pairs, first global row) of `rank` when global_pairs are split as evenly as possible."""
    start, stop = rank * global_pairs // world_size, (rank + 1) * global_pairs // world_size
    return stop - start, start


def _rank_measure(rank: int, world_size: int, path: str, global_pairs: int, dim: int, tile: int, threads: int,
                  repeats: int) -> dict:
    import warnings

    import torch

    from dmlscale.distributed.collectives import barrier

    warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated", FutureWarning)
    torch.set_num_threads(threads)
    release_freed_memory()
    num_pairs, offset = even_share(global_pairs, rank, world_size)
    step = loss_step(path, num_pairs, dim, tile, rank=rank, world_size=world_size, offset=offset,
                     global_pairs=global_pairs)
    step()  # warm-up: gloo's connections and first-call allocations are not the step's
    barrier()
    received_before = tcp_bytes_received()
    with PeakMemory() as peak:
        step()
    received = tcp_bytes_received() - received_before
    wall, cpu = [], []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        cpu.append(cpu_seconds(step))
        wall.append(time.perf_counter() - start)
    return {"extra_bytes": peak.extra_bytes, "received_bytes": received, "wall_seconds": wall, "cpu_seconds": cpu}


def measure_run(path: str, global_pairs: int, world_size: int, *, dim: int, tile: int, threads: int,
                repeats: int) -> dict:
    """One real run: the largest rank's memory and bytes, its fastest step's CPU time, and the fastest step's
    wall time (that of its slowest rank)."""
    ranks = results(run_world(_rank_measure, world_size, path, global_pairs, dim, tile, threads, repeats))
    wall = [max(r["wall_seconds"][i] for r in ranks) for i in range(repeats)]
    return {"extra_bytes": max(r["extra_bytes"] for r in ranks),
            "received_bytes": max(r["received_bytes"] for r in ranks),
            "cpu_seconds": max(min(r["cpu_seconds"]) for r in ranks), "wall_seconds": min(wall)}


def _rank_loopback(rank: int, world_size: int, num_values: int, threads: int, repeats: int) -> dict:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    block = torch.full((num_values,), float(rank))
    out = [torch.empty_like(block) for _ in range(world_size)]
    dist.all_gather(out, block)  # warm-up
    rates, cpu_per_byte = [], []
    for _ in range(repeats):
        dist.barrier()
        received_before, start, cpu_start = tcp_bytes_received(), time.perf_counter(), time.process_time()
        dist.all_gather(out, block)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        received = tcp_bytes_received() - received_before
        rates.append(received / seconds)
        cpu_per_byte.append(cpu / received)
    return {"bytes_per_second": max(rates), "cpu_seconds_per_byte": min(cpu_per_byte)}


def loopback_costs(num_bytes: int, *, threads: int, repeats: int) -> tuple[float, float]:
    """(bytes per second a rank receives, CPU seconds it spends per byte received) in a 2-rank gloo
    all-gather of num_bytes per rank over loopback (the sends' CPU time included)."""
    ranks = results(run_world(_rank_loopback, 2, num_bytes // 4, threads, repeats))
    return min(r["bytes_per_second"] for r in ranks), max(r["cpu_seconds_per_byte"] for r in ranks)
