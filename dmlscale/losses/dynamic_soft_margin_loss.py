"""Dynamic soft margin loss: triplet gaps weighted by their running cumulative distribution.

Legend: T terms (triplets, or paired rows without labels), gap_T = d_ap - d_an, K histogram bins;
hist_K the running histogram of the gaps (state), cdf_K its cumulative sum.

The histogram is a running statistic of the whole batch and the loss is one already-reduced number:
DistributedLoss runs it on one process only (`uses_batch_statistics`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.distances import LpDistance
from dmlscale.indices import convert_to_triplets
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int, check_real


class DynamicSoftMarginLoss(BaseMetricLossFunction):
    """Dynamic soft margin loss (Zhang and Rusinkiewicz 2019). Each term's gap x = d_ap - d_an is
    weighted by the CDF of the running histogram of gaps at its bin:

        L = mean_t CDF(bin(x_t)) * x_t,   bins of width 2 |min_val| / num_bins from min_val

    With labels the terms are all triplets (or those of indices_tuple); without, row i of the batch and
    row i of ref_emb are a positive pair and its negative is the closest other row or column. Before
    weighting, the histogram takes this batch's gaps (split linearly between two bins) with weight
    `momentum` (1 on the first call) and is renormalised. LpDistance(p=2, normalize_embeddings=True) only.

    Differences from PML: the histogram is a statistic, kept without gradient (PML keeps the autograd
    graph in it, so its second backward raises); gaps outside the bins go to the end bins (PML indexes
    out of range there).
    """

    uses_batch_statistics = True

    def __init__(self, min_val: float = -2.0, num_bins: int = 10, momentum: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, p=2, normalize_embeddings=True)
        owner = type(self).__name__
        self.min_val = check_real(owner, "min_val", min_val)
        if self.min_val == 0:
            raise ValueError(f"{owner}: min_val must be non-zero (it sets the bin width), got {min_val!r}")
        self.num_bins = check_positive_int(owner, "num_bins", num_bins)
        if self.num_bins < 2:
            raise ValueError(f"{owner}: num_bins must be at least 2, got {num_bins!r}")
        self.momentum = check_real(owner, "momentum", momentum, minimum=0)
        self.delta = 2 * abs(self.min_val) / self.num_bins
        self.hist_ = torch.zeros((self.num_bins,))
        self.add_to_recordable_attributes(list_of_names=["num_bins"], is_stat=False)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.hist_ = self.hist_.to(device=embeddings.device, dtype=embeddings.dtype)
        mat_BR = self.distance(embeddings, ref_emb)
        if labels is None:
            gap_T = self.paired_gaps(mat_BR)
        else:
            a_T, p_T, n_T = convert_to_triplets(indices_tuple, labels, ref_labels, "all",
                                                query_ref_index=query_ref_index)
            gap_T = mat_BR[a_T, p_T] - mat_BR[a_T, n_T]
        if len(gap_T) == 0:
            return self.zero_losses()
        self.update_histogram(gap_T.detach())
        cdf_K = torch.cumsum(self.hist_, 0)
        loss = (cdf_K[self.bin_of(gap_T.detach()).clamp(0, self.num_bins - 1)] * gap_T).mean()
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}

    @staticmethod
    def paired_gaps(mat_BR: torch.Tensor) -> torch.Tensor:
        """Without labels: d(i, i) minus the smallest other entry of row i or column i (PML's layout
        for unequal sizes: max(B, R) terms, missing entries 0)."""
        num_rows, num_cols = mat_BR.shape
        size, shared = max(num_rows, num_cols), min(num_rows, num_cols)
        eye_BR = torch.zeros_like(mat_BR, dtype=torch.bool)
        eye_BR[torch.arange(shared), torch.arange(shared)] = True
        off_BR = mat_BR.masked_fill(eye_BR, math.inf)
        pos_T = torch.zeros(size, dtype=mat_BR.dtype, device=mat_BR.device)
        pos_T = torch.cat([mat_BR.diagonal(), pos_T[shared:]])
        col_min = torch.cat([off_BR.min(dim=0).values, pos_T.new_zeros(size - num_cols)])
        row_min = torch.cat([off_BR.min(dim=1).values, pos_T.new_zeros(size - num_rows)])
        return pos_T - torch.minimum(col_min, row_min)

    def bin_of(self, gap_T: torch.Tensor) -> torch.Tensor:
        return torch.floor((gap_T - self.min_val) / self.delta).long()

    def update_histogram(self, gap_T: torch.Tensor) -> None:
        position_T = (gap_T - self.min_val) / self.delta
        lower_T = self.bin_of(gap_T).clamp(0, self.num_bins - 2)
        upper_share_T = (position_T - lower_T).clamp(0, 1)
        momentum = self.momentum if self.hist_.sum() != 0 else 1.0
        hist_K = torch.scatter_add((1.0 - momentum) * self.hist_, 0, lower_T, momentum * (1 - upper_share_T))
        hist_K = torch.scatter_add(hist_K, 0, lower_T + 1, momentum * upper_share_T)
        self.hist_ = hist_K / hist_K.sum()
