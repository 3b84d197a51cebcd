"""Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss").

Legend: B query rows, R reference rows; p*(i), n*(i) the hardest positive and negative of anchor i.

For each anchor i with a positive and a negative in the (reference) batch:
    p*(i) = argmax_{j: y_j = y_i, j != i} d_ij,   n*(i) = argmin_{k: y_k != y_i} d_ik,
    L_i = [d_{i p*(i)} - d_{i n*(i)} + margin]_+          (s_in* - s_ip* + margin for a similarity)
reduced like TripletMarginLoss (default: mean over the non-zero L_i). It is exactly
TripletMarginLoss fed the triplets of BatchHardMiner; `smooth_loss=True` gives the soft-margin variant.
With `tiled` (automatic at max(B, R) >= tiled_threshold) both the mining and the loss are streamed.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.losses.triplet_margin_loss import TripletMarginLoss
from dmlscale.miners.batch_hard import BatchHardMiner


class BatchHardTripletLoss(TripletMarginLoss):
    """TripletMarginLoss over the batch-hard triplets it mines itself (one per anchor)."""

    def __init__(self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False, **kwargs: Any) -> None:
        if "triplets_per_anchor" in kwargs:
            raise ValueError(
                f"BatchHardTripletLoss uses one (hardest) triplet per anchor; "
                f"got triplets_per_anchor={kwargs['triplets_per_anchor']!r}"
            )
        super().__init__(margin=margin, swap=swap, smooth_loss=smooth_loss, **kwargs)
        self.miner = BatchHardMiner(distance=self.distance, tiled=self.tiled, tile_size=self.tile_size,
                                    tiled_threshold=self.tiled_threshold)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if indices_tuple is not None:
            raise ValueError("BatchHardTripletLoss mines its own triplets; pass indices_tuple=None")
        self.require_labels(labels, allow_indices=False)
        mined = self.miner(embeddings, labels, ref_emb, ref_labels, query_ref_index=query_ref_index)
        return super().compute_loss(embeddings, labels, mined, ref_emb, ref_labels, query_ref_index)
