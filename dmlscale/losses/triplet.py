"""Triplet margin loss.

L(a, p, n) = [d_ap - d_an + margin]_+ for distances, [s_an - s_ap + margin]_+ for similarities;
`smooth_loss` uses softplus instead of the hinge, `swap` uses the positive-negative distance when it
is the harder one. Triplets come from `indices_tuple`, or from labels: all of them
(`triplets_per_anchor="all"`, enumerated without a dense B x R x R mask) or a random sample per anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlscale.indices import convert_to_triplets
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import AvgNonZeroReducer
from dmlscale.param_checks import check_positive_int


class TripletMarginLoss(BaseMetricLossFunction):
    """Margin-based triplet loss (PML defaults: margin 0.05, Euclidean distance, AvgNonZero)."""

    def __init__(self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False,
                 triplets_per_anchor: int | str = "all", **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive_int(type(self).__name__, "triplets_per_anchor", triplets_per_anchor, alternatives=("all",))
        self.margin = margin
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = triplets_per_anchor

    def get_default_reducer(self):
        return AvgNonZeroReducer()

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index) -> dict:
        self.require_labels(labels, indices_tuple)
        a_T, p_T, n_T = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor,
                                            query_ref_index=query_ref_index)
        if len(a_T) == 0:
            return self.zero_losses()
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
