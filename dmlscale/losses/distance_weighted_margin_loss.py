"""Margin loss with distance-weighted sampling (Wu et al. 2017, "Sampling Matters in Deep Embedding Learning").

Legend: T mined triplets (a, p, n); ap_T, an_T Euclidean distances between unit-normalised embeddings.

Triplets come from DistanceWeightedMiner (uniform positives, negatives drawn with weight 1/q(d)).
Each triplet contributes one positive and one negative pair term, with y = +1 / -1:
    l(i, j) = [alpha + y_ij (d_ij - beta)]_+,
    L = sum_T ([alpha + d_ap - beta]_+ + [alpha - d_an + beta]_+) / #(pair terms > 0)
`beta` (the boundary between positives and negatives) is a constant, or a learned scalar with
`learn_beta=True`; like any module weight (and PML's MarginLoss) it is held in torch's default
dtype and cast to the embeddings' dtype in the forward pass. The default reducer (AvgNonZero over the 2T pair terms) gives the normalisation above.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import AvgNonZeroReducer, BaseReducer
from dmlscale.miners.distance_weighted import DistanceWeightedMiner
from dmlscale.param_checks import check_real


class DistanceWeightedMarginLoss(BaseMetricLossFunction):
    """Margin loss [alpha + y (d - beta)]_+ on distance-weighted samples; requires normalised L2 distance."""

    def __init__(self, margin: float = 0.2, beta: float = 1.2, learn_beta: bool = False, cutoff: float = 0.5,
                 nonzero_loss_cutoff: float = 1.4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_real(type(self).__name__, "margin", margin, finite=False)
        check_real(type(self).__name__, "beta", beta, finite=False)
        if not isinstance(learn_beta, bool):
            raise ValueError(f"learn_beta must be a bool, got {learn_beta!r}")
        self.miner = DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff,
                                           distance=self.distance)
        self.margin = margin
        self.learn_beta = learn_beta
        beta_tensor = torch.tensor(float(beta))
        if learn_beta:
            self.beta = torch.nn.Parameter(beta_tensor)
        else:
            self.register_buffer("beta", beta_tensor)

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(p=2, power=1, normalize_embeddings=True)

    def get_default_reducer(self) -> BaseReducer:
        return AvgNonZeroReducer()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if indices_tuple is not None:
            raise ValueError("DistanceWeightedMarginLoss samples its own triplets; pass indices_tuple=None")
        self.require_labels(labels, allow_indices=False)
        a_T, p_T, n_T = self.miner(embeddings, labels, ref_emb, ref_labels, query_ref_index=query_ref_index)
        if len(a_T) == 0:
            return self.zero_losses()
        beta = self.beta.to(device=embeddings.device, dtype=embeddings.dtype)
        mat_BR = self.distance(embeddings, ref_emb)
        pos_T = F.relu(self.margin + mat_BR[a_T, p_T] - beta)
        neg_T = F.relu(self.margin - mat_BR[a_T, n_T] + beta)
        losses_2T = torch.cat([pos_T, neg_T])
        return {"loss": {"losses": losses_2T, "indices": torch.cat([a_T, a_T]), "reduction_type": "element"}}
