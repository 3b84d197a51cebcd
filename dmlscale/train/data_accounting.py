"""Bad-data limits over the whole run: every rank, every loader worker, every epoch, every session.

Each rank's loader counts what it read (`Loader.totals()`: samples seen, skipped, repeated). At every
step the trainer sums three numbers over ranks in the step's one all-reduce (StopSignal.exchange);
when the sums pass a limit, the full per-shard totals are gathered and `check_totals` raises the same
DirtyDataError on every rank, so the same bad shard stops a run at any world size. What earlier
sessions counted travels in the checkpoint (identical on every rank) and is added once, by rank 0.
"""

from __future__ import annotations

from dmlscale.data.accounting import check_totals, merge_totals
from dmlscale.distributed.collectives import all_gather_objects
from dmlscale.train.config import DataConfig

COUNTED = ("seen", "skipped", "repeats")


class GlobalDataAccounting:
    def __init__(self, loader, data: DataConfig, *, rank: int, earlier: dict | None = None):
        self.loader, self.data, self.rank = loader, data, rank
        self.earlier = earlier if rank == 0 and earlier else None

    def _local(self) -> dict:
        totals = self.loader.totals()
        return merge_totals([totals, self.earlier]) if self.earlier else totals

    def local_counts(self) -> list[float]:
        """This rank's share of the run's (seen, skipped, repeats), for the step's all-reduce."""
        totals = self._local()
        return [float(totals[key]) for key in COUNTED]

    def global_totals(self) -> dict:
        """Collective: the run's totals over every rank (and earlier sessions)."""
        return merge_totals(all_gather_objects(self._local()))

    def check(self, summed: list[float]) -> None:
        """Collective when a limit is passed (every rank sees the same sums): raise DirtyDataError."""
        seen, skipped, repeats = summed
        data = self.data
        if seen < data.skip_check_after:  # check_totals waits as long, for both limits
            return
        too_many_skips = skipped > data.max_skip_fraction * seen
        too_many_repeats = repeats > data.max_repeat_fraction * max(seen - skipped, 1)  # of the trained samples
        if too_many_skips or too_many_repeats:
            check_totals(self.global_totals(), max_skip_fraction=data.max_skip_fraction,
                         skip_check_after=data.skip_check_after, max_repeat_fraction=data.max_repeat_fraction)
