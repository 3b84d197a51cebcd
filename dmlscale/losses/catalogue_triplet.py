"""Two classic triplet losses from the Deep_metric catalogue, built on TripletMarginLoss.

Legend: B queries, R references, T triplets (a, p, n); mat_BR the distance matrix, ap_T / an_T the
anchor-positive and anchor-negative values of each triplet, gap_T = d_ap - d_an (s_an - s_ap for
similarities, via `distance.margin`).

Triplets are enumerated from the positive and negative pair lists (`indices.all_triplets`), so memory
is O(T) on top of the B x R matrix: no dense B x R x R mask is ever built.
"""

from __future__ import annotations

import torch

from dmlscale.distances import BaseDistance
from dmlscale.param_checks import check_real
from dmlscale.losses.reducers import BaseReducer, MeanReducer
from dmlscale.losses.triplet import TripletMarginLoss


class BatchAllTripletLoss(TripletMarginLoss):
    """Batch-all triplet loss: L = mean over active triplets of [d_ap - d_an + margin]_+.

    Every valid triplet of the batch is used (a != p share a label, n has another), or the triplets of
    `indices_tuple` when given. Default margin 0.1 on L2-normalised Euclidean distances.

    Averaging: the default reducer is AvgNonZeroReducer, i.e. the sum of the hinges divided by the
    number of *active* (strictly positive) triplets. With all triplets most of them are already
    satisfied, and a plain mean would shrink the loss (and the gradient) as training progresses; the
    active average keeps the scale of the informative triplets. Pass `reducer=MeanReducer()` for the
    plain mean. The catalogue's "dynamic learning rate" factor is left out: it is an optimiser
    concern, not part of the loss.
    """

    def __init__(self, margin: float = 0.1, *, distance: BaseDistance | None = None,
                 reducer: BaseReducer | None = None, collect_stats: bool = False) -> None:
        margin = check_real(type(self).__name__, "margin", margin, minimum=0)
        super().__init__(margin=margin, swap=False, smooth_loss=False, triplets_per_anchor="all",
                         distance=distance, reducer=reducer, collect_stats=collect_stats)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


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
                 collect_stats: bool = False) -> None:
        beta = check_real(type(self).__name__, "beta", beta, minimum=0, strict=True)
        super().__init__(margin=0.0, swap=False, smooth_loss=True, triplets_per_anchor=triplets_per_anchor,
                         distance=distance, reducer=reducer, collect_stats=collect_stats)
        self.beta = beta

    def get_default_reducer(self) -> BaseReducer:
        return MeanReducer()

    def per_triplet_loss(self, violation_T: torch.Tensor) -> torch.Tensor:
        # margin is 0, so the violation is d_ap - d_an; log(1 + e^x) exactly, without softplus's
        # linear cut-off above x = 20
        return torch.logaddexp(self.beta * violation_T, torch.zeros((), dtype=violation_T.dtype,
                                                                    device=violation_T.device))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, triplets_per_anchor={self.triplets_per_anchor!r}"
