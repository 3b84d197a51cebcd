"""The one switch between a loss's (or miner's) materialised and streamed paths.

Light on purpose (no torch import, nothing from `dmlscale.losses`), so that miners, which
`dmlscale.losses` imports, can use it at module level.
"""

from __future__ import annotations

from dmlscale.param_checks import check_positive_int

DEFAULT_TILE = 1024


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
