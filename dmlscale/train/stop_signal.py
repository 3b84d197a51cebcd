"""Stop cleanly on SIGTERM / SIGUSR1 (preemption, Slurm's time-limit warning, torchrun shutting down).

The handler only records the signal; the trainer asks `requested()` at every step boundary, which
all-reduces the flag (MAX) so that every rank stops after the same step, even when the signal reached
only some of them or reached them during different steps. The trainer then checkpoints and returns,
and `--resume latest` continues from exactly that step.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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

    def requested(self) -> bool:
        """True on every rank once any rank has received a signal (collective when distributed)."""
        flag = torch.tensor([0.0 if self.received is None else 1.0], device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
