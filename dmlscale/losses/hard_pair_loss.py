"""Hard-pair loss (Deep_metric "A_hard_pair"): absolute thresholds pick the hard pairs, a soft
maximum (log-sum-exp) aggregates them per anchor.

Legend: B queries, R references; mat_BR the distance matrix, pos_BR / neg_BR the 0/1 pair masks,
*_keep_BR the pairs that count, loss_B one loss per anchor.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_real


class HardPairLoss(GenericPairLoss):
    """Per anchor a, with excess_p = d_ap - pos_threshold and excess_n = neg_margin - d_an:

        L_a = (1/beta) log sum_{p: excess_p > 0} exp(beta * excess_p)
            + (1/beta) log sum_{n: excess_n > 0} exp(beta * excess_n)

    and L = the mean of L_a over the B anchors (default MeanReducer; every anchor counts, as in the
    catalogue, which divides by the batch size). Only positives farther than `pos_threshold` and
    negatives closer than `neg_margin` contribute: the thresholds are absolute, not relative to the
    other pairs. A sum with no active term is 0 (and sends no gradient), so an anchor whose pairs are
    all satisfied contributes 0. Each active sum is >= its largest excess and at most log(count)/beta
    above it: beta interpolates between a smoothed sum and the single hardest pair.

    Defaults match the catalogue for L2-normalised Euclidean distances (the default LpDistance):
    pos_threshold=0.8, neg_margin=1.1. beta=10 (the catalogue keeps it a free parameter): a gap of
    0.1 in excess then weighs e times more, so the hardest pairs dominate without a hard max.
    For similarities the inequalities flip (s_ap < pos_threshold, s_an > neg_margin) via
    `distance.margin`; pick thresholds on the similarity scale then.
    The catalogue's "dynamic learning rate" factor is left out (an optimiser concern).
    """

    uses_masks = True

    def __init__(self, pos_threshold: float = 0.8, neg_margin: float = 1.1, beta: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        self.pos_threshold = check_real(name, "pos_threshold", pos_threshold)
        self.neg_margin = check_real(name, "neg_margin", neg_margin)
        self.beta = check_real(name, "beta", beta, minimum=0, strict=True)

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        pos_excess_BR = self.distance.margin(mat_BR, self.pos_threshold)
        neg_excess_BR = self.distance.margin(self.neg_margin, mat_BR)
        pos_keep_BR = (pos_BR > 0) & (pos_excess_BR > 0)
        neg_keep_BR = (neg_BR > 0) & (neg_excess_BR > 0)
        pos_B = masked_logsumexp(self.beta * pos_excess_BR, pos_keep_BR, add_one=False) / self.beta
        neg_B = masked_logsumexp(self.beta * neg_excess_BR, neg_keep_BR, add_one=False) / self.beta
        loss_B = pos_B + neg_B
        anchors_B = torch.arange(mat_BR.shape[0], device=mat_BR.device)
        return {"loss": {"losses": loss_B, "indices": anchors_B, "reduction_type": "element"}}

    def extra_repr(self) -> str:
        return f"pos_threshold={self.pos_threshold}, neg_margin={self.neg_margin}, beta={self.beta}"
