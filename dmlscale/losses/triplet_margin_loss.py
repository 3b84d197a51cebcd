"""Triplet margin loss.

L(a, p, n) = [d_ap - d_an + margin]_+ for distances, [s_an - s_ap + margin]_+ for similarities;
`smooth_loss` uses softplus instead of the hinge, `swap` uses the positive-negative distance when it
is the harder one. Triplets come from `indices_tuple`, or from labels: all of them
(`triplets_per_anchor="all"`, enumerated without a dense B x R x R mask) or a random sample per anchor.

Streamed path (`tiled`, chosen automatically from `max(B, R) >= tiled_threshold`): no B x R matrix.
Given triplets, only their d_ap, d_an (and d_pn for `swap`) are computed (`paired_values`); all
triplets from labels are summed by `streamed_batch_all` as (sum, count) under the reducer's filter.
Same value and gradient as the materialised path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.indices import convert_to_triplets
from dmlscale.kernels.batch_all_triplets import streamed_batch_all
from dmlscale.kernels.distance_tiles import normalised_pair, paired_values
from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import AvgNonZeroReducer, BaseReducer
from dmlscale.losses.streamed_totals import (ReducesStreamedTotals, sub_reducer, supports_totals, term_filter,
                                             totals_entry)
from dmlscale.param_checks import check_positive_int


class TripletMarginLoss(TilingSwitch, ReducesStreamedTotals, BaseMetricLossFunction):
    """Margin-based triplet loss (PML defaults: margin 0.05, Euclidean distance, AvgNonZero)."""

    def __init__(self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False,
                 triplets_per_anchor: int | str = "all", *, tiled: bool | None = None,
                 tile_size: int = DEFAULT_TILE, tiled_threshold: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.set_tiling(tiled, tile_size, tiled_threshold)
        check_positive_int(type(self).__name__, "triplets_per_anchor", triplets_per_anchor, alternatives=("all",))
        self.margin = margin
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = triplets_per_anchor

    def get_default_reducer(self) -> BaseReducer:
        return AvgNonZeroReducer()

    def streams_all_triplets(self) -> bool:
        """Whether all triplets from labels can be summed streamed (else the materialised path runs)."""
        problem = None
        if not supports_totals(sub_reducer(self.reducer, "loss")):
            problem = f"reducer {type(sub_reducer(self.reducer, 'loss')).__name__}"
        elif self.swap:
            problem = "swap=True"
        if problem is not None and self.tiled:
            raise ValueError(f"{type(self).__name__}(tiled=True) cannot stream all triplets with {problem}; "
                             "pass tiled=None/False, an indices_tuple, or a Mean/Sum/Threshold reducer without swap")
        return problem is None

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple)
        streamed = self.uses_tiles(max(len(embeddings), len(ref_emb)))
        if streamed and indices_tuple is None and self.triplets_per_anchor == "all" and self.streams_all_triplets():
            loss_reducer = sub_reducer(self.reducer, "loss")  # MultipleReducers with an embedding regularizer
            q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
            total, count, _ = streamed_batch_all(
                self.distance, q_BD, r_RD, labels, ref_labels, query_ref_index, margin=self.margin,
                term_fn=self.per_triplet_loss, keep_fn=term_filter(loss_reducer), tile=self.tile_size)
            return {"loss": totals_entry(total, count, "triplet", loss_reducer)}
        a_T, p_T, n_T = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor,
                                            query_ref_index=query_ref_index)
        if len(a_T) == 0:
            return self.zero_losses()
        if streamed:
            q_BD, r_RD = normalised_pair(self.distance, embeddings, ref_emb)
            ap_T = paired_values(self.distance, q_BD, r_RD, a_T, p_T)
            an_T = paired_values(self.distance, q_BD, r_RD, a_T, n_T)
            if self.swap:
                an_T = self.distance.smallest_dist(an_T, paired_values(self.distance, r_RD, r_RD, p_T, n_T))
        else:
            mat_BR = self.distance(embeddings, ref_emb)
            ap_T = mat_BR[a_T, p_T]
            an_T = mat_BR[a_T, n_T]
            if self.swap:
                ref_mat_RR = mat_BR if ref_emb is embeddings else self.distance(ref_emb)
                an_T = self.distance.smallest_dist(an_T, ref_mat_RR[p_T, n_T])
        loss_T = self.per_triplet_loss(self.distance.margin(ap_T, an_T) + self.margin)
        return {"loss": {"losses": loss_T, "indices": (a_T, p_T, n_T), "reduction_type": "triplet"}}

    def per_triplet_loss(self, violation_T: torch.Tensor) -> torch.Tensor:
        """The term of one triplet from its violation d_ap - d_an + margin (hinge, or softplus)."""
        return F.softplus(violation_T) if self.smooth_loss else F.relu(violation_T)
