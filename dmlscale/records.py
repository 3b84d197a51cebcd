"""Opt-in statistics on modules, with the attribute contract of pytorch-metric-learning.

A module lists the names of its statistics; `reset_stats()` zeroes them before each call and
`collect_stats=True` makes the module fill them (as plain Python floats, never part of the graph).

`collect_stats=None` (the default everywhere) means "use `COLLECT_STATS`", this module's switch for the
whole process, read when the module is built: PML's `pytorch_metric_learning.utils.common_functions.COLLECT_STATS`.
As in PML, a module built with statistics off has no statistic attributes at all (`hasattr` is False),
except those it sets on every call (a miner's counts, `DivisorReducer.divisor`); plain recorded
settings (`is_stat=False`, such as a loss's margin) always exist.
"""

from __future__ import annotations

import torch

COLLECT_STATS = False  # the default for collect_stats=None; set dmlscale.records.COLLECT_STATS = True for all


class ModuleWithRecords(torch.nn.Module):
    """A `torch.nn.Module` that can record named statistics about its last call."""

    def __init__(self, collect_stats: bool | None = None) -> None:
        super().__init__()
        if collect_stats is not None and not isinstance(collect_stats, bool):
            raise ValueError(f"collect_stats must be None (use dmlscale.records.COLLECT_STATS) or a bool, "
                             f"got {collect_stats!r}")
        self.collect_stats = COLLECT_STATS if collect_stats is None else collect_stats
        self._record_these: list[str] = []
        self._record_these_stats: list[str] = []

    def add_to_recordable_attributes(
        self, name: str | None = None, list_of_names: list[str] | None = None, is_stat: bool = False
    ) -> None:
        """Register settings (is_stat=False) or statistics; statistics only exist when collect_stats is on."""
        if is_stat and not self.collect_stats:
            return
        names = ([name] if name is not None else []) + list(list_of_names or [])
        registry = self._record_these_stats if is_stat else self._record_these
        for stat_name in names:
            if not hasattr(self, stat_name):
                setattr(self, stat_name, 0)
            if stat_name not in registry:
                registry.append(stat_name)

    def reset_stats(self) -> None:
        for stat_name in self._record_these_stats:
            setattr(self, stat_name, 0)

    def set_stats(self, stats: dict[str, float]) -> None:
        """Store statistics only when `collect_stats` is on (values are computed by the caller)."""
        if self.collect_stats:
            for stat_name, value in stats.items():
                setattr(self, stat_name, value)
