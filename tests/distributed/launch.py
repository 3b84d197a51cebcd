"""Run a function on real processes joined by a gloo process group (no mocks).

`run_world(fn, world_size, *args)` starts `world_size` processes; each calls `fn(rank, world_size, *args)`
after joining the group on a free loopback port, and returns a picklable result. Results (or the
exception text) come back per rank.
"""

from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp

from dmlscale.distributed import WorldInfo, init_process_group
from dmlscale.distributed.env import free_port
from dmlscale.train import train_cli


def _worker(rank, world_size, port, out_dir, fn, args):
    info = WorldInfo(rank=rank, local_rank=rank, world_size=world_size, local_world_size=world_size,
                     master_addr="127.0.0.1", master_port=port)
    outcome = {}
    try:
        if world_size == 1:  # dmlscale starts no group for one process; DDP in the tests still wants one
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        else:
            init_process_group(info, backend="gloo", timeout_s=60)
        outcome["result"] = fn(rank, world_size, *args)
    except Exception as error:  # reported to the parent test, which asserts on it
        outcome["error"] = f"{type(error).__name__}: {error}"
        outcome["traceback"] = traceback.format_exc()
    if world_size > 1 and dist.is_initialized():
        try:  # no rank tears gloo down while another still talks to it
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=10))
        except Exception:  # another rank failed or left early: its own outcome says why
            pass
    # The outcome is written before teardown, so an abort inside gloo's teardown cannot lose a result.
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(outcome, handle)
    if dist.is_initialized():
        dist.destroy_process_group()


# The ranks start from the fork server `dmlscale train --nproc` uses (its preload list), with the test
# helpers added, instead of each rank importing torch, DeepSpeed and open_clip again (5-10 s per rank on 2
# busy cores); the server has only imported modules, run no threads and formed no group.
FORKSERVER_PRELOAD = [*train_cli.FORKSERVER_PRELOAD, "dmlscale.losses", "dmlscale.miners", "tests.distributed.launch"]


def _context():
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return context


def run_world(fn, world_size: int, *args) -> list[dict]:
    """Spawn the ranks and return one outcome dict per rank ({'result': ...} or {'error': ...}).

    A rank that dies after writing its outcome (gloo can abort in its teardown, "terminate called
    without an active exception") still counts, since its work finished; a rank that dies before
    writing one fails the test.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            _context()  # the preload list must be set before the first start of the server
            mp.start_processes(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size,
                               join=True, start_method="forkserver")
        except mp.ProcessExitedException:
            missing = [r for r in range(world_size) if not os.path.exists(os.path.join(out_dir, f"rank{r}.pkl"))]
            if missing:
                raise
        outcomes = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as handle:
                outcomes.append(pickle.load(handle))
    return outcomes


def results(outcomes: list[dict]) -> list:
    """The per-rank results, failing with the first rank's traceback if any rank raised."""
    for rank, outcome in enumerate(outcomes):
        if "error" in outcome:
            raise AssertionError(f"rank {rank} failed:\n{outcome['traceback']}")
    return [o["result"] for o in outcomes]
