"""FastAP: average precision per query, from soft histograms of its distances to the references.

Legend: B queries, R references, E histogram bin centres; mat_BR the distance matrix, pos_BR / neg_BR
0/1 masks of the positive / negative references, pulse_EBR each pair's triangular weight per bin,
pos_BE / neg_BE the per-query soft histograms, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.indices import anchor_weights, matches_and_diffs
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int


class FastAPLoss(BaseMetricLossFunction):
    """FastAP (Cakir et al. 2019). For a query with P_q positives, soft counts h+_k (positives) and h_k
    (all) in bin k of [0, 2^power] (triangular kernels of width 2^power / num_bins), H+ and H their
    cumulative sums:

        L_q = 1 - (1 / P_q) sum_k h+_k H+_k / H_k

    over the queries with a positive, weighted by how often a row appears in indices_tuple (1 without
    one). MeanReducer. LpDistance(p=2, normalize_embeddings=True) only (default power=2).

    PML refuses `ref_emb`; here the references are the histogram's population (self excluded through
    `query_ref_index`), so DistributedLoss and CrossBatchMemory work, and a batch against itself is PML's.
    """

    def __init__(self, num_bins: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, p=2, normalize_embeddings=True)
        self.num_bins = check_positive_int(type(self).__name__, "num_bins", num_bins)
        self.num_edges = self.num_bins + 1
        self.add_to_recordable_attributes(list_of_names=["num_bins"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(power=2)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, allow_indices=False)
        dtype, device = embeddings.dtype, embeddings.device
        weights_B = anchor_weights(indices_tuple, len(embeddings), dtype, device, using_ref=ref_emb is not embeddings)
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        pos_BR, neg_BR = same_BR.to(dtype), diff_BR.to(dtype)
        num_pos_B = pos_BR.sum(dim=1)
        has_pos_B = num_pos_B > 0
        if not bool(has_pos_B.any()):
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        top = 2.0 ** self.distance.power
        width = top / self.num_bins
        centres_E = torch.linspace(0.0, top, steps=self.num_edges, device=device, dtype=dtype)
        pulse_EBR = torch.relu(1 - (mat_BR[None] - centres_E[:, None, None]).abs() / width)
        pos_BE = (pulse_EBR * pos_BR).sum(dim=2).T
        neg_BE = (pulse_EBR * neg_BR).sum(dim=2).T
        del pulse_EBR
        cum_pos_BE = torch.cumsum(pos_BE, dim=1)
        cum_all_BE = torch.cumsum(pos_BE + neg_BE, dim=1)
        product_BE = pos_BE * cum_pos_BE
        usable_BE = (product_BE > 0) & (cum_all_BE > 0)
        if not bool(usable_BE.any()):
            return self.zero_losses()
        ratio_BE = torch.where(usable_BE, product_BE / torch.where(usable_BE, cum_all_BE, 1), 0)
        ap_B = ratio_BE.sum(dim=1)[has_pos_B] / num_pos_B[has_pos_B]
        losses = (1 - ap_B) * weights_B[has_pos_B]
        return {"loss": {"losses": losses, "indices": torch.where(has_pos_B)[0], "reduction_type": "element"}}
