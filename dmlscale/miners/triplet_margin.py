"""Triplet margin mining: keep the triplets whose margin d_an - d_ap is small enough.

Legend: T triplets; ap_T, an_T anchor-positive and anchor-negative values, gap_T = d_an - d_ap
(s_ap - s_an for a similarity: positive means the triplet is already ordered correctly).

type_of_triplets:  all: gap <= margin   hard: gap <= 0   semihard: 0 < gap <= margin   easy: gap > margin
Triplets are enumerated with `indices.all_triplets` (memory O(T), never a dense B x R x R mask);
with `tiled` (automatic at max(B, R) >= tiled_threshold) they are found tile by tile
(`kernels/mining.py`): the same triplets in the same order, no B x R matrix.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import all_triplets, implicit_self_index
from dmlscale.kernels.distance_tiles import normalised_pair
from dmlscale.kernels.mining import margin_keep, streamed_margin_triplets
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.miners.base import BaseMiner
from dmlscale.param_checks import check_real

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


class TripletMarginMiner(TilingSwitch, BaseMiner):
    """Triplets (a, p, n) that violate (or, for "easy", satisfy) the margin; PML order (a, then p, then n)."""

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", *, tiled: bool | None = None,
                 tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_tiling(tiled, tile_size, tiled_threshold)
        check_real(type(self).__name__, "margin", margin, finite=False)
        if type_of_triplets not in TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets must be one of {TRIPLET_TYPES}, got {type_of_triplets!r}")
        self.margin = margin
        self.type_of_triplets = type_of_triplets
        self.add_to_recordable_attributes(
            list_of_names=["avg_triplet_margin", "pos_pair_dist", "neg_pair_dist"], is_stat=True
        )

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor,
             query_ref_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        query_ref_index = implicit_self_index(labels, ref_labels, query_ref_index)
        if self.uses_tiles(max(len(embeddings), len(ref_emb))):
            q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
            triplets, stats = streamed_margin_triplets(self.distance, q_BD, r_RD, labels, ref_labels,
                                                       query_ref_index, self.margin, self.type_of_triplets,
                                                       self.tile_size)
            if self.collect_stats:
                self.set_stats(stats)
            return triplets
        a_T, p_T, n_T = all_triplets(labels, ref_labels, query_ref_index)
        mat_BR = self.distance(embeddings, ref_emb)
        ap_T = mat_BR[a_T, p_T]
        an_T = mat_BR[a_T, n_T]
        gap_T = self.distance.margin(an_T, ap_T)
        if self.collect_stats:
            self.set_stats({"pos_pair_dist": ap_T.mean().item(), "neg_pair_dist": an_T.mean().item(),
                            "avg_triplet_margin": gap_T.mean().item()})
        keep_T = margin_keep(gap_T, self.margin, self.type_of_triplets)
        return a_T[keep_T], p_T[keep_T], n_T[keep_T]
