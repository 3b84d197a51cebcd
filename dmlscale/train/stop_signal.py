"""Stop cleanly on SIGTERM / SIGUSR1 (preemption, Slurm's time-limit warning, torchrun shutting down).

The handler only records the signal; the trainer calls `exchange(counts)` at every step boundary: one
all-reduce (SUM) carries which signal reached which rank together with the trainer's per-rank counters
(data accounting), so that every rank stops after the same step with the same cause, even when the
signal reached only some of them or reached them during different steps. The trainer then checkpoints
and exits with EXIT_STOPPED, and a restart (or `--resume latest`) continues from exactly that step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dmlscale.distributed.collectives import all_reduce_sum_no_grad, world_rank_and_size

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class StopRequest:
    signum: int  # the signal (SIGTERM wins over SIGUSR1 when both arrived)
    ranks: tuple[int, ...]  # the ranks it reached

    def describe(self) -> str:
        return f"{signal.Signals(self.signum).name} received by rank{'s' if len(self.ranks) > 1 else ''} " \
               f"{', '.join(map(str, self.ranks))}"


class StopSignal:
    """Installs handlers for SIGNALS while active (a context manager); restores the old ones on exit."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def exchange(self, counts: Sequence[float] = ()) -> tuple[StopRequest | None, list[float]]:
        """Collective: (the stop request if any rank received a signal, else None; `counts` summed over
        ranks). Every rank gets the same answer."""
        rank, world_size = world_rank_and_size()
        received = torch.zeros(len(SIGNALS), world_size, dtype=torch.float64)
        if self.received is not None:
            received[SIGNALS.index(self.received), rank] = 1
        local = torch.cat([received.flatten(), torch.tensor(list(counts), dtype=torch.float64)])
        total = all_reduce_sum_no_grad(local.to(self.device)).cpu()
        flags, summed = total[:received.numel()].view_as(received), total[received.numel():].tolist()
        for index, signum in enumerate(SIGNALS):
            ranks = tuple(int(r) for r in torch.nonzero(flags[index] > 0).flatten().tolist())
            if ranks:
                return StopRequest(int(signum), ranks), summed
        return None, summed
