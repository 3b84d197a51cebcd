"""Signal-to-noise-ratio contrastive loss: the contrastive loss on the SNR distance."""

from __future__ import annotations

from typing import Any

from dmlscale.distances import BaseDistance, SNRDistance
from dmlscale.losses.contrastive_loss import ContrastiveLoss


class SignalToNoiseRatioContrastiveLoss(ContrastiveLoss):
    """SNR contrastive loss (Yuan et al. 2019): ContrastiveLoss with d_ij = var(x_i - x_j) / var(x_i),

        L = [d_ap - pos_margin]_+ over positive pairs  +  [neg_margin - d_an]_+ over negative pairs,

    each part reduced on its own (AvgNonZeroReducer). SNRDistance only; the options and the streamed
    path are ContrastiveLoss's.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(SNRDistance)

    def get_default_distance(self) -> BaseDistance:
        return SNRDistance()
