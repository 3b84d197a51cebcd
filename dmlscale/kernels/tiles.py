"""The one tile walk every streamed kernel uses, and the one switch deciding when a loss or miner takes it.

`tiles` yields the row-major tiles of a num_rows x num_cols matrix; `TilingSwitch` is the mixin by
which a loss or miner picks its materialised path or its streamed one (same values and gradients).
"""

from __future__ import annotations

from collections.abc import Iterator

from dmlscale.param_checks import check_positive_int

DEFAULT_TILE = 1024


def tiles(num_rows: int, num_cols: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of every tile of a num_rows x num_cols matrix, row-major."""
    for r0 in range(0, num_rows, tile):
        for c0 in range(0, num_cols, tile):
            yield r0, min(r0 + tile, num_rows), c0, min(c0 + tile, num_cols)


class TilingSwitch:
    """Mixin: `tiled` None picks the streamed path from `tiled_threshold` rows on; True/False force a path.

    Both paths give the same values and gradients; `set_tiling` in `__init__` stores the choice.
    """

    tiled: bool | None
    tile_size: int
    tiled_threshold: int

    def set_tiling(self, tiled: bool | None, tile_size: int, tiled_threshold: int) -> None:
        """Validate and store the path choice."""
        name = type(self).__name__
        if tiled not in (None, True, False):
            raise ValueError(f"{name}: tiled must be None (automatic), True or False, got {tiled!r}")
        self.tiled = tiled
        self.tile_size = check_positive_int(name, "tile_size", tile_size)
        self.tiled_threshold = check_positive_int(name, "tiled_threshold", tiled_threshold)

    def uses_tiles(self, num_rows: int) -> bool:
        """Whether a batch of `num_rows` streams: forced by `tiled`, else from the threshold."""
        return self.tiled if self.tiled is not None else num_rows >= self.tiled_threshold
