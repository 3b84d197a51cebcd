"""Batch-all triplet loss (Deep_metric catalogue), built on TripletMarginLoss.

Legend: B queries, R references, T triplets (a, p, n); d_ap / d_an the anchor-positive and
anchor-negative values of each triplet.

Triplets are enumerated from the positive and negative pair lists (`indices.all_triplets`), so memory
is O(T) on top of the B x R matrix: no dense B x R x R mask is ever built (and none of either with
the streamed path, see TripletMarginLoss).
"""

from __future__ import annotations

import torch

from dmlscale.distances import BaseDistance
from dmlscale.losses.reducers import BaseReducer
from dmlscale.losses.triplet_margin_loss import TripletMarginLoss
from dmlscale.param_checks import check_real


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
                 reducer: BaseReducer | None = None, collect_stats: bool | None = None,
                 embedding_regularizer: torch.nn.Module | None = None, embedding_reg_weight: float = 1) -> None:
        margin = check_real(type(self).__name__, "margin", margin, minimum=0)
        super().__init__(margin=margin, swap=False, smooth_loss=False, triplets_per_anchor="all",
                         distance=distance, reducer=reducer, collect_stats=collect_stats,
                         embedding_regularizer=embedding_regularizer, embedding_reg_weight=embedding_reg_weight)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
