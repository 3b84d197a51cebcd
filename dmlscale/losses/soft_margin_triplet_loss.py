"""Soft-margin triplet loss (Deep_metric catalogue), built on TripletMarginLoss.

Legend: T triplets (a, p, n); violation_T = d_ap - d_an (s_an - s_ap for similarities, via `distance.margin`).
"""

from __future__ import annotations

import torch

from dmlscale.distances import BaseDistance
from dmlscale.kernels.logsumexp import log_one_plus_exp
from dmlscale.losses.reducers import BaseReducer, MeanReducer
from dmlscale.losses.triplet_margin_loss import TripletMarginLoss
from dmlscale.param_checks import check_real


class SoftMarginTripletLoss(TripletMarginLoss):
    """Soft-margin triplet loss: L = mean over triplets of log(1 + exp(beta * (d_ap - d_an))).

    A smooth hinge with no margin to tune: every triplet contributes, a satisfied one ever less.
    `beta` (default 1.0, > 0) sets the sharpness. Triplets: all of them (default), a random sample
    of `triplets_per_anchor` per anchor, or `indices_tuple`. Default reducer: MeanReducer (every term
    is positive, so the mean over all triplets is the natural average). With beta=1 this equals
    TripletMarginLoss(margin=0, smooth_loss=True) reduced by the mean.
    """

    def __init__(self, beta: float = 1.0, *, triplets_per_anchor: int | str = "all",
                 distance: BaseDistance | None = None, reducer: BaseReducer | None = None,
                 collect_stats: bool | None = None, embedding_regularizer: torch.nn.Module | None = None,
                 embedding_reg_weight: float = 1) -> None:
        beta = check_real(type(self).__name__, "beta", beta, minimum=0, strict=True)
        super().__init__(margin=0.0, swap=False, smooth_loss=True, triplets_per_anchor=triplets_per_anchor,
                         distance=distance, reducer=reducer, collect_stats=collect_stats,
                         embedding_regularizer=embedding_regularizer, embedding_reg_weight=embedding_reg_weight)
        self.beta = beta

    def get_default_reducer(self) -> BaseReducer:
        return MeanReducer()

    def per_triplet_loss(self, violation_T: torch.Tensor) -> torch.Tensor:
        # margin is 0, so the violation is d_ap - d_an; log(1 + e^x) exactly, without softplus's
        # linear cut-off above x = 20
        return log_one_plus_exp(self.beta * violation_T)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, triplets_per_anchor={self.triplets_per_anchor!r}"
