"""Console progress on rank 0: a tqdm bar with rate and ETA for training, shard writing and evaluation.

Other ranks (and `enabled=False`) get the same object doing nothing, so callers never branch on rank.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TextIO


class Progress:
    """`with Progress(total, desc="train", unit="step", rank=rank) as bar: bar.update(1, loss=0.3)`.

    `total`: the number of units (None: unknown, so a rate but no ETA). `initial`: units already
    done (a resumed run starts its bar at the checkpoint's step, so the ETA counts what is left).
    """

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", rank: int = 0, initial: int = 0,
                 enabled: bool = True, file: TextIO | None = None, min_interval_s: float = 0.5) -> None:
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"Progress: total must be None or an int >= 0, got {total!r}")
        if isinstance(initial, bool) or not isinstance(initial, int) or initial < 0:
            raise ValueError(f"Progress: initial must be an int >= 0, got {initial!r}")
        self._bar = None
        if enabled and rank == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file or sys.stderr,
                             dynamic_ncols=True, mininterval=min_interval_s, smoothing=0.1)

    @property
    def active(self) -> bool:
        return self._bar is not None

    @property
    def count(self) -> int | None:
        """Units done so far (None on inactive ranks)."""
        return None if self._bar is None else self._bar.n

    def update(self, num: int = 1, **postfix: object) -> None:
        """Advance by `num` units; keyword values (loss=..., lr=...) are shown after the bar."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix(_short(postfix), refresh=False)
        self._bar.update(num)

    def write(self, message: str) -> None:
        """Print a line above the bar (rank 0 only), without breaking it."""
        if self._bar is not None:
            self._bar.write(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _short(values: Mapping[str, object]) -> dict[str, str]:
    """Compact postfix strings: floats with 4 significant digits."""
    return {key: f"{value:.4g}" if isinstance(value, float) else str(value) for key, value in values.items()}


def track(items: Iterable, *, total: int | None = None, desc: str, unit: str = "it", rank: int = 0,
          enabled: bool = True, file: TextIO | None = None) -> Iterator:
    """Iterate `items` with a rank-0 progress bar (evaluation batches, shards being written)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc=desc, unit=unit, rank=rank, enabled=enabled, file=file) as bar:
        for item in items:
            yield item
            bar.update(1)
