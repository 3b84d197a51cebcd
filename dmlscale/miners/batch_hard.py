"""Batch-hard mining (Hermans et al. 2017): the farthest positive and the closest negative per anchor.

Legend: B query rows, R reference rows; the returned tensors have one entry per anchor that has both.
With `tiled` (automatic at max(B, R) >= tiled_threshold) the picks are made tile by tile
(`kernels/mining.py`): the same triplets, no B x R matrix.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import implicit_self_index
from dmlscale.kernels.distance_tiles import normalised_pair
from dmlscale.kernels.mining import streamed_hardest
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.miners.batch_easy_hard import HARD, BatchEasyHardMiner


class BatchHardMiner(TilingSwitch, BatchEasyHardMiner):
    """BatchEasyHardMiner with hard positives and hard negatives, returned as triplets (a, p, n)."""

    def __init__(self, *, tiled: bool | None = None, tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096,
                 **kwargs: Any) -> None:
        fixed = sorted(set(kwargs) & {"pos_strategy", "neg_strategy"})
        if fixed:
            raise ValueError(f"BatchHardMiner fixes both strategies to 'hard'; do not pass {fixed}")
        super().__init__(pos_strategy=HARD, neg_strategy=HARD, **kwargs)
        self.set_tiling(tiled, tile_size, tiled_threshold)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        if self.uses_tiles(max(len(embeddings), len(ref_emb))):
            q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
            a, p, n, pos_dist, neg_dist = streamed_hardest(
                self.distance, q_BD, r_RD, labels, ref_labels, query_ref_index, self.tile_size,
                self.allowed_pos_range, self.allowed_neg_range)
            self.record_extremes(pos_dist, neg_dist)
            return a, p, n
        a, p, _, n = super().mine(embeddings, labels, ref_emb, ref_labels, query_ref_index)
        return a, p, n
