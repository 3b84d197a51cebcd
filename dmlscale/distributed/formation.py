"""Forming the default process group so that it forms within the timeout or fails naming the missing ranks.

Why not plain `torch.distributed.init_process_group`: under torchrun the workers share the agent's TCPStore,
which outlives a worker restart, and torch keys the group's addresses by fixed names ("default_pg/0", ...).
A restarted worker then reads a dead peer's address from the previous attempt and fails with "Gloo
connectFullMesh failed ... Connection refused", or waits on it until gloo's timeout. Here every try of
every start of the workers gets a fresh key prefix, `dmlscale/<job>/gen_<g>/try_<k>/` (the generation g
is opened by rank 0, see `_generation`), and:

1. each rank registers itself under the prefix (`joined/<rank>`), and all wait until every rank has: a rank
   that never comes is named ("rank 1 never joined");
2. the group forms on a PrefixStore of that prefix, so no key from an earlier try or restart is seen;
3. the ranks agree on the try's outcome through one compare-and-set key (`outcome`): "ok" once every rank
   reported `formed/<rank>`, else the first failure. A transient connection error is retried with back-off
   on try k+1 (the failed group torn down) within the same time budget; anything else fails at once.

A watchdog thread backs this up: should a call into torch or gloo block past the deadline (plus a grace), it
prints which ranks never registered or formed and ends the process with EXIT_GROUP_TIMEOUT, instead of a hang.
Groups made later (DeepSpeed's `new_group` calls) default to the same timeout: see `set_default_group_timeout`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import sys
import threading
import time

import torch.distributed as dist
from torch.distributed import distributed_c10d

EXIT_GROUP_TIMEOUT = 1  # the watchdog's exit code: the same "the run failed" as an exception in the CLI
WATCHDOG_GRACE_S = 5.0  # the watchdog fires this long after the deadline that the main thread enforces itself
TRANSIENT_MARKERS = ("connection refused", "connection reset", "connection closed", "broken pipe",
                     "econnrefused", "econnreset", "connectfullmesh failed", "address already in use")
POLL_S = 0.05
FORM_TRY_MIN_S = 15.0


class GroupFormationError(RuntimeError):
    """The process group did not form; the message names the ranks that never joined or formed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormedGroup:
    """The default group this process formed, and where its rendezvous keys live (heartbeats use them)."""

    rank: int
    world_size: int
    backend: str
    host: str
    port: int
    prefix: str  # the key prefix of the try that formed, ending in "/"
    timeout_s: float
    tries: int  # 1 when the first try formed
    store: dist.Store  # the TCPStore client, prefixed with `prefix`

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def open_store(self, timeout_s: float) -> dist.Store:
        """A separate client of the same store with its own timeout (for reads while the group is stuck)."""
        client = dist.TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                               timeout=datetime.timedelta(seconds=timeout_s))
        return dist.PrefixStore(self.prefix.rstrip("/"), client)


_current: FormedGroup | None = None  # like torch's own default group: one per process


def current_group() -> FormedGroup | None:
    """The group `init_process_group` formed in this process, or None (single process, or not yet)."""
    return _current if dist.is_initialized() else None


def set_default_group_timeout(timeout_s: float) -> None:
    """Make groups created without an explicit timeout (DeepSpeed's `new_group(ranks)`) use `timeout_s`
    instead of torch's 30 minutes (10 for NCCL): `new_group` asks `_get_default_timeout`, which reads these
    module globals of torch.distributed.distributed_c10d."""
    timeout = datetime.timedelta(seconds=timeout_s)
    distributed_c10d.default_pg_timeout = timeout
    if isinstance(getattr(distributed_c10d, "default_pg_nccl_timeout", None), datetime.timedelta):
        distributed_c10d.default_pg_nccl_timeout = timeout


def _is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


def _missing(store: dist.Store, prefix: str, kind: str, world_size: int) -> list[int]:
    return [r for r in range(world_size) if not store.check([f"{prefix}{kind}/{r}"])]


def _ranks_text(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


class _Watchdog:
    """Ends the process (after printing who is missing) if formation has not finished by `deadline`."""

    def __init__(self, deadline: float, describe):
        self._done, self._describe, self._deadline = threading.Event(), describe, deadline
        self._thread = threading.Thread(target=self._run, name="dmlscale-group-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._done.wait(max(0.0, self._deadline - time.monotonic())):
            return
        try:
            message = self._describe()
        except Exception as error:  # the store itself may be gone; still say something and exit
            message = f"(could not read the rendezvous store: {error})"
        print(f"dmlscale: {message}; ending this process (exit {EXIT_GROUP_TIMEOUT})", file=sys.stderr, flush=True)
        os._exit(EXIT_GROUP_TIMEOUT)

    def stop(self) -> None:
        self._done.set()


def form_default_group(*, rank: int, world_size: int, host: str, port: int, backend: str, timeout_s: float,
                       hosts_store: bool, job_id: str = "", restart_count: int = 0) -> FormedGroup:
    """Form the default group (see module docstring). `hosts_store`: this process serves the TCPStore
    (rank 0 outside torchrun's agent store); otherwise it is a client of the store at host:port."""
    global _current
    deadline = time.monotonic() + timeout_s
    root = f"dmlscale/{job_id or 'job'}/"
    me = f"{socket.gethostname()} pid {os.getpid()}"
    where = f"store at {host}:{port}, keys {root}"
    head = f"rank {rank}: the process group of {world_size} ranks at {host}:{port} did not form within {timeout_s:g} s"
    state = {"prefix": root + "gen_?/try_0/", "phase": "joined"}

    def describe() -> str:
        probe = dist.TCPStore(host, port, is_master=False, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=2))
        missing = _missing(probe, state["prefix"], state["phase"], world_size)
        verb = "never joined" if state["phase"] == "joined" else "joined but did not finish forming it"
        who = f"{_ranks_text(missing)} {verb}" if missing else "every rank joined (blocked inside torch / gloo)"
        return f"{head}: {who} ({where}; restart {restart_count})"

    watchdog = _Watchdog(deadline + WATCHDOG_GRACE_S, describe)
    try:
        store = _open_store(host, port, world_size=world_size, hosts_store=hosts_store, deadline=deadline,
                            head=head, rank=rank)
        generation = _generation(store, root, rank=rank, me=me, deadline=deadline, head=head, where=where)
        attempt, backoff = 0, 0.2
        while True:
            prefix = f"{root}gen_{generation}/try_{attempt}/"
            state.update(prefix=prefix, phase="joined")
            try:
                ok, reason = _join_and_form(store, prefix, rank=rank, world_size=world_size, backend=backend,
                                            deadline=deadline, head=head, where=where, timeout_s=timeout_s, me=me,
                                            newer=lambda: _newest(store, root) > generation)
            except _Superseded:  # this rank joined a stale generation; rank 0 has opened a newer one
                generation, attempt = _newest(store, root), 0
                continue
            state["phase"] = "formed"
            outcome = _agree(store, prefix, ok=ok, reason=reason, rank=rank, world_size=world_size,
                             deadline=deadline)
            if outcome == "ok":
                distributed_c10d.set_timeout(datetime.timedelta(seconds=timeout_s))
                _current = FormedGroup(rank=rank, world_size=world_size, backend=backend, host=host, port=port,
                                       prefix=prefix, timeout_s=timeout_s, tries=attempt + 1,
                                       store=dist.PrefixStore(prefix.rstrip("/"), store))
                return _current
            if dist.is_initialized():  # this rank formed, another did not: tear the half-made group down
                dist.destroy_process_group()
            transient = outcome.startswith("transient:")
            if not transient or time.monotonic() + backoff >= deadline:
                raise GroupFormationError(f"{head}: {outcome.split(':', 1)[1].strip()} (try {attempt + 1}; {where})")
            time.sleep(backoff)
            attempt, backoff = attempt + 1, min(2 * backoff, 5.0)
    finally:
        watchdog.stop()


class _Superseded(Exception):
    """Rank 0 opened a newer generation while this rank waited in an older one."""


def _newest(store: dist.Store, root: str) -> int:
    return int(store.add(root + "generation", 0))


def _generation(store: dist.Store, root: str, *, rank: int, me: str, deadline: float, head: str, where: str) -> int:
    """The generation of this worker group. Rank 0 opens a new one (a counter in the store); the others
    take the newest whose slot for their rank is free: a slot taken by another process is a previous worker
    group's, so they wait for rank 0 to open the next. (torchrun's restart count cannot serve: an agent
    restarting its workers because another node failed does not count that restart.)"""
    if rank == 0:
        return int(store.add(root + "generation", 1))
    while True:
        generation = _newest(store, root)
        slot = f"{root}gen_{generation}/try_0/joined/{rank}"
        if generation >= 1 and (not store.check([slot]) or store.get(slot).decode() == me):
            return generation
        if time.monotonic() >= deadline:
            raise GroupFormationError(f"{head}: rank 0 never joined (it opens each start's generation; the newest, "
                                      f"{generation}, is an earlier start's) ({where})")
        time.sleep(POLL_S)


def _open_store(host: str, port: int, *, world_size: int, hosts_store: bool, deadline: float, head: str,
                rank: int) -> dist.Store:
    backoff = 0.2
    while True:
        remaining = deadline - time.monotonic()
        try:
            return dist.TCPStore(host, port, world_size=world_size, is_master=hosts_store, wait_for_workers=False,
                                 multi_tenant=True, timeout=datetime.timedelta(seconds=max(remaining, 0.5)))
        except (RuntimeError, dist.DistError) as error:  # the server not up yet / the port still held
            if time.monotonic() + backoff >= deadline or not (_is_transient(error) or "timeout" in str(error).lower()):
                role = "could not serve" if hosts_store else "could not reach"
                server = "" if hosts_store else " (rank 0 or the torchrun agent serves it: is it running?)"
                raise GroupFormationError(f"{head}: rank {rank} {role} the store at {host}:{port}{server}: "
                                          f"{error}") from error
            time.sleep(backoff)
            backoff = min(2 * backoff, 5.0)


def _join_and_form(store, prefix: str, *, rank: int, world_size: int, backend: str, deadline: float, head: str,
                   where: str, timeout_s: float, me: str, newer) -> tuple[bool, str]:
    """Register, wait for every rank, form the group on this try's keys. (formed, reason if not)."""
    store.set(f"{prefix}joined/{rank}", me)
    while missing := _missing(store, prefix, "joined", world_size):
        if rank != 0 and newer():
            raise _Superseded
        if time.monotonic() >= deadline:
            raise GroupFormationError(f"{head}: {_ranks_text(missing)} never joined ({where})")
        time.sleep(POLL_S)
    # A try waits on gloo's connections at most a quarter of the budget (>= 15 s), so that a peer that
    # failed its try does not hold this rank until the whole budget is gone; collectives get timeout_s.
    form_s = max(1.0, min(deadline - time.monotonic(), max(FORM_TRY_MIN_S, timeout_s / 4)))
    try:
        dist.init_process_group(backend=backend, store=dist.PrefixStore(prefix + "pg", store), rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=form_s))
    except (RuntimeError, dist.DistError) as error:
        kind = "transient" if _is_transient(error) else "error"
        return False, f"{kind}: rank {rank}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return True, ""


def _agree(store, prefix: str, *, ok: bool, reason: str, rank: int, world_size: int, deadline: float) -> str:
    """One outcome for the try on every rank: "ok", or the first failure reported (compare-and-set)."""
    key = f"{prefix}outcome"
    if not ok:
        store.compare_set(key, "", reason)
        return store.get(key).decode()
    store.set(f"{prefix}formed/{rank}", "1")
    while not store.check([key]):
        missing = _missing(store, prefix, "formed", world_size)
        if not missing:
            store.compare_set(key, "", "ok")
        elif time.monotonic() >= deadline:
            store.compare_set(key, "", f"error: {_ranks_text(missing)} joined but did not finish forming the group")
        else:
            time.sleep(POLL_S)
    return store.get(key).decode()
