"""World information from torchrun, Slurm or a plain process, and process-group start-up with a timeout.

This is the one place that reads the launcher's environment variables. Precedence: torchrun's
(`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `GROUP_RANK`, `MASTER_ADDR`, `MASTER_PORT`),
then Slurm's (`SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`, `SLURM_NTASKS_PER_NODE`, `SLURM_NODEID`,
first host of `SLURM_JOB_NODELIST`), then a single process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import socket
from collections.abc import Mapping

import torch
import torch.distributed as dist

from dmlscale.distributed.formation import form_default_group, set_default_group_timeout

DEFAULT_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"  # "torchrun", "slurm" or "single"
    restart_count: int = 0  # how often the launcher restarted this job (TORCHELASTIC_RESTART_COUNT, SLURM_RESTART_COUNT)
    job_id: str = ""  # the launcher's id of this job, the same on every rank and attempt (TORCHELASTIC_RUN_ID, SLURM_JOB_ID)
    agent_store: bool = False  # torchrun's agent serves the store at master_addr:master_port (TORCHELASTIC_USE_AGENT_STORE)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, world_size={self.world_size})")
        if not 0 <= self.local_rank < max(1, self.local_world_size):
            raise ValueError(f"local_rank {self.local_rank} is outside [0, local_world_size={self.local_world_size})")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(environ: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = environ.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {key} is required but not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def first_slurm_host(nodelist: str) -> str:
    """First host name of a Slurm node list such as 'gpu[003-005,010],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def world_info_from_env(environ: Mapping[str, str] | None = None) -> WorldInfo:
    """Read the launcher's variables (see module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world_size = _int(env, "WORLD_SIZE")
        return WorldInfo(
            rank=_int(env, "RANK"),
            local_rank=_int(env, "LOCAL_RANK", 0),
            world_size=world_size,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", world_size),
            node_rank=_int(env, "GROUP_RANK", 0),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT", 29500),
            launcher="torchrun",
            restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
            job_id=env.get("TORCHELASTIC_RUN_ID", "") or env.get("SLURM_JOB_ID", ""),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "") == "True",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world_size = _int(env, "SLURM_NTASKS")
        per_node = env.get("SLURM_NTASKS_PER_NODE", str(world_size)).split("(")[0].split(",")[0]
        return WorldInfo(
            rank=_int(env, "SLURM_PROCID"),
            local_rank=_int(env, "SLURM_LOCALID", 0),
            world_size=world_size,
            local_world_size=int(per_node),
            node_rank=_int(env, "SLURM_NODEID", 0),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=_int(env, "MASTER_PORT", 29500),
            launcher="slurm",
            restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
            job_id=env.get("SLURM_JOB_ID", ""),
        )
    return WorldInfo()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what Slurm, taskset or a container's cpuset
    grant), not the machine's core count, which oversubscribes a job given a share of a node."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_rank(local_world_size: int) -> int:
    """Torch CPU threads for each of `local_world_size` ranks on this node: the usable cores shared out."""
    return max(1, usable_cores() // max(1, local_world_size))


def free_port() -> int:
    """A TCP port free on loopback now (for single-machine groups: --nproc, a 1-rank group, tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(
    info: WorldInfo,
    *,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
) -> str:
    """Start the default process group (NCCL on GPU, gloo on CPU), bounded by `timeout_s`: it forms within
    that time or raises naming the ranks that never joined (dmlscale/distributed/formation.py), and every
    collective, and every group made later without its own timeout (DeepSpeed's), times out after it.
    Transient connection errors are retried within the budget on fresh store keys. Returns the backend
    used; a single process starts no group and returns "none". `init_method`: "tcp://host:port" instead of
    master_addr:master_port; any other URL goes to torch unchanged (without the diagnosis)."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    set_default_group_timeout(timeout_s)
    if not info.is_distributed:
        return "none"
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if dist.is_initialized():
        return dist.get_backend()
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    host, port = info.master_addr, info.master_port
    if init_method is not None:
        match = re.fullmatch(r"tcp://\[?([^\]]+?)\]?:(\d+)/?", init_method)
        if match is None:
            dist.init_process_group(backend=backend, init_method=init_method, rank=info.rank,
                                    world_size=info.world_size, timeout=datetime.timedelta(seconds=timeout_s))
            return backend
        host, port = match.group(1), int(match.group(2))
    uses_agent_store = info.agent_store and (host, port) == (info.master_addr, info.master_port)
    form_default_group(rank=info.rank, world_size=info.world_size, host=host, port=port, backend=backend,
                       timeout_s=timeout_s, hosts_store=info.rank == 0 and not uses_agent_store,
                       job_id=info.job_id, restart_count=info.restart_count)
    return backend


def ensure_process_group(local_rank: int | None = None) -> None:
    """A process group and LOCAL_RANK for code that needs both (DeepSpeed): torchrun sets them; a single
    process without a group gets a 1-rank gloo group on a free loopback port, and a spawned or Slurm
    process without LOCAL_RANK gets `local_rank` (default: its rank)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(dist.get_rank() if local_rank is None else local_rank)


def destroy_process_group() -> None:
    """Tear down this process's default group, if one runs (the end of a --nproc rank)."""
    if dist.is_initialized():
        dist.destroy_process_group()
