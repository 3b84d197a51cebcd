"""Peak memory and throughput bookkeeping: samples per second (per rank and global), data vs step time.

No communication here: the trainer supplies the global sample count (it knows the global batch, or
sums the local counts with its own all-reduce).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def peak_memory_bytes(device: torch.device | str | None = None) -> int:
    """Peak memory of this process: CUDA max allocated on `device` when it is a CUDA device, else the
    process's max resident set size (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss if sys.platform == "darwin" else max_rss * 1024)


class StepTimer:
    """Splits each iteration into data time (waiting for the batch) and step time (forward, backward,
    update) and counts samples; `summary()` gives the rates since the last `reset()`.

        timer = StepTimer()
        for batch in loader:          # the time spent here is data time
            timer.data_done()
            train_step(batch)         # ... and this is step time
            timer.step_done(len(batch))
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Start a new interval now (after logging, or after a pause such as evaluation)."""
        self._mark = self._clock()
        self._interval_start = self._mark
        self.data_s = self.step_s = 0.0
        self.num_steps = self.num_samples = 0

    def data_done(self) -> None:
        now = self._clock()
        self.data_s += now - self._mark
        self._mark = now

    def step_done(self, num_samples: int) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"StepTimer.step_done: num_samples must be an int >= 0, got {num_samples!r}")
        now = self._clock()
        self.step_s += now - self._mark
        self._mark = now
        self.num_steps += 1
        self.num_samples += num_samples

    def summary(self, *, global_samples: int | None = None, prefix: str = "perf/") -> dict[str, float]:
        """Rates over the interval: per-rank samples/s, global samples/s (when `global_samples`, the
        samples of all ranks in this interval, is given), mean data and step seconds per iteration and
        the data share of the time."""
        elapsed = max(self._clock() - self._interval_start, 1e-12)
        steps = max(self.num_steps, 1)
        busy = self.data_s + self.step_s
        out = {
            f"{prefix}samples_per_s_rank": self.num_samples / elapsed,
            f"{prefix}data_time_s": self.data_s / steps,
            f"{prefix}step_time_s": self.step_s / steps,
            f"{prefix}data_fraction": self.data_s / busy if busy > 0 else 0.0,
        }
        if global_samples is not None:
            out[f"{prefix}samples_per_s_global"] = global_samples / elapsed
        return out
