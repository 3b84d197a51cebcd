"""Count skipped samples, log them at a limited rate, and stop the run when too many are bad.

Each reader (one per DataLoader worker, or the main process) owns one SkipLog. Logging never sleeps:
the first skip is logged at once, later ones are summed and reported at most once per interval.
The threshold compares skipped with seen samples once `check_after` samples have been seen, so a
single bad sample at the start of an epoch does not stop a run. That local check is per reader; a
trainer that checks the sums over every rank (accounting.py) turns it off with local_check=False.

Besides skips, a SkipLog counts repeats (refill samples handed out that the epoch may already have
given, see plan.py) and shards whose tar disagrees with sizes.json; `snapshot()` carries them all.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

LOG = logging.getLogger("dmlscale.data")


class DirtyDataError(ValueError):
    """Too large a fraction of the samples was unreadable; the message names the worst shards and the limit.
    A ValueError: bad input data is the user's to fix, and `dmlscale train` reports it as one line, exit 2."""


class SkipLog:
    def __init__(self, *, max_skip_fraction: float, check_after: int, log_interval_s: float,
                 where: str = "", clock: Callable[[], float] = time.monotonic, local_check: bool = True) -> None:
        self.max_skip_fraction, self.check_after = max_skip_fraction, check_after
        self.log_interval_s, self.where, self.clock = log_interval_s, where, clock
        self.local_check = local_check
        self.size_mismatch: dict[str, list[int]] = {}  # path -> [listed, actual]
        self.sizes_checked: set[str] = set()  # shards whose true size was counted
        self.forget_counts()
        self._unlogged: Counter[str] = Counter()
        self._last_log = None

    def forget_counts(self) -> None:
        """Zero the sample counters (after a resume replay: those samples were counted before)."""
        self.num_seen = self.num_repeats = 0
        self.by_reason: Counter[str] = Counter()
        self.by_shard: Counter[str] = Counter()

    @property
    def num_skipped(self) -> int:
        return sum(self.by_reason.values())

    def saw_good(self, *, repeat: bool = False) -> None:
        self.num_seen += 1
        self.num_repeats += repeat

    def sizes_disagree(self, shard_path: str, listed: int, actual: int) -> None:
        """Record (and warn once) that the tar holds `actual` samples where sizes.json lists `listed`."""
        if shard_path in self.size_mismatch:
            return
        self.size_mismatch[shard_path] = [listed, actual]
        LOG.warning("%ssizes.json lists %d samples for %s but the tar holds %d%s", self.where, listed,
                    shard_path, actual, "; the samples past the listed count are never read" if actual > listed
                    else "; the missing positions count as truncated")

    def skip(self, reason: str, shard_path: str, key: str) -> None:
        """Record one bad sample, log if due, and raise DirtyDataError past the threshold."""
        self.num_seen += 1
        self.by_reason[reason] += 1
        self.by_shard[shard_path] += 1
        self._unlogged[reason] += 1
        now = self.clock()
        if self._last_log is None or now - self._last_log >= self.log_interval_s:
            reasons = ", ".join(f"{count} {name}" for name, count in sorted(self._unlogged.items()))
            LOG.warning("%sskipped %s (last: %r in %s); %d skipped of %d seen so far", self.where, reasons,
                        key, os.path.basename(shard_path), self.num_skipped, self.num_seen)
            self._unlogged.clear()
            self._last_log = now
        if self.local_check:
            self.check()

    def check(self) -> None:
        if self.num_seen < self.check_after or self.num_skipped <= self.max_skip_fraction * self.num_seen:
            return
        worst = ", ".join(f"{path} ({count})" for path, count in self.by_shard.most_common(10))
        reasons = ", ".join(f"{name}: {count}" for name, count in sorted(self.by_reason.items()))
        raise DirtyDataError(
            f"{self.where}{self.num_skipped} of {self.num_seen} samples were skipped "
            f"({self.num_skipped / self.num_seen:.1%} > max_skip_fraction={self.max_skip_fraction}); "
            f"reasons: {reasons}; shards with skips: {worst}")

    def snapshot(self) -> dict:
        """Picklable counters, sent along with each batch to the main process."""
        return {"seen": self.num_seen, "skipped": self.num_skipped, "repeats": self.num_repeats,
                "by_reason": dict(self.by_reason), "by_shard": dict(self.by_shard),
                "size_mismatch": {path: list(counts) for path, counts in self.size_mismatch.items()}}
