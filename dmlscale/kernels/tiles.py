"""The one tile walk every streamed kernel uses: row-major tiles of a num_rows x num_cols matrix."""

from __future__ import annotations

from collections.abc import Iterator


def tiles(num_rows: int, num_cols: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of every tile of a num_rows x num_cols matrix, row-major."""
    for r0 in range(0, num_rows, tile):
        for c0 in range(0, num_cols, tile):
            yield r0, min(r0 + tile, num_rows), c0, min(c0 + tile, num_cols)
