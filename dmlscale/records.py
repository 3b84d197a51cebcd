"""Opt-in statistics on modules, with the attribute contract of pytorch-metric-learning.

A module lists the names of its statistics; `reset_stats()` zeroes them before each call and
`collect_stats=True` makes the module fill them (as plain Python floats, never part of the graph).
"""

from __future__ import annotations

import torch


class ModuleWithRecords(torch.nn.Module):
    """A `torch.nn.Module` that can record named statistics about its last call."""

    def __init__(self, collect_stats: bool = False) -> None:
        super().__init__()
        if not isinstance(collect_stats, bool):
            raise ValueError(f"collect_stats must be a bool, got {collect_stats!r}")
        self.collect_stats = collect_stats
        self._record_these_stats: list[str] = []

    def add_to_recordable_attributes(
        self, name: str | None = None, list_of_names: list[str] | None = None, is_stat: bool = False
    ) -> None:
        names = ([name] if name is not None else []) + list(list_of_names or [])
        for stat_name in names:
            if not hasattr(self, stat_name):
                setattr(self, stat_name, 0)
            if is_stat and stat_name not in self._record_these_stats:
                self._record_these_stats.append(stat_name)

    def reset_stats(self) -> None:
        for stat_name in self._record_these_stats:
            setattr(self, stat_name, 0)

    def set_stats(self, stats: dict[str, float]) -> None:
        """Store statistics only when `collect_stats` is on (values are computed by the caller)."""
        if self.collect_stats:
            for stat_name, value in stats.items():
                setattr(self, stat_name, value)
