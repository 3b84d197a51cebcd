"""Binomial deviance loss (Deep_metric "BinDevianceLoss"): a logistic loss on similarities, with the
negatives mined against the anchor's hardest positive.

Legend: B queries, R references; sim_BR the similarity matrix (any distance works via
`distance.margin`), pos_keep_BR / neg_keep_BR the pairs that count, *_B one value per anchor.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.kernels.logsumexp import log_one_plus_exp
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_real


def _masked_mean(x_BR: torch.Tensor, keep_BR: torch.Tensor) -> torch.Tensor:
    """Row means over the kept entries; 0 (and no gradient) for a row with none."""
    total_B = torch.where(keep_BR, x_BR, torch.zeros((), dtype=x_BR.dtype, device=x_BR.device)).sum(dim=1)
    return total_B / keep_BR.sum(dim=1).clamp(min=1).to(x_BR.dtype)


class BinomialDevianceLoss(GenericPairLoss):
    """Per anchor a (similarities s, default CosineSimilarity):

        L_a = mean_{p} log(1 + exp(-alpha (s_ap - margin)))
            + neg_weight * mean_{n in N_a} log(1 + exp(beta (s_an - margin)))
        N_a = {n : s_an > min_p s_ap - slack}

    and L = the mean of L_a over the B anchors (default MeanReducer). The negatives kept are those
    more similar than the anchor's *least similar* positive (its hardest positive, the catalogue's
    `pos_pair[0]` after an ascending sort) minus `slack`: the negatives that violate, or nearly
    violate, the ordering the loss wants. Selection is a mask and sends no gradient. An empty mean is
    0, so an anchor with no kept negative keeps only its positive term, and one without positives
    (possible with `ref_emb` or `indices_tuple`) contributes 0.

    Defaults from the catalogue: alpha=2, beta=50, margin=0.5, slack=0.05, neg_weight=0.04 (the
    steep, down-weighted negative term concentrates on the few mined negatives without letting them
    dominate). With a distance (is_inverted=False) every sign flips through `distance.margin`:
    log(1 + exp(alpha (d_ap - margin))), log(1 + exp(beta (margin - d_an))), N_a = {d_an < max_p d_ap + slack}.
    """

    uses_masks = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, margin: float = 0.5, slack: float = 0.05,
                 neg_weight: float = 0.04, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        name = type(self).__name__
        self.alpha = check_real(name, "alpha", alpha, minimum=0, strict=True)
        self.beta = check_real(name, "beta", beta, minimum=0, strict=True)
        self.margin = check_real(name, "margin", margin)
        self.slack = check_real(name, "slack", slack, minimum=0)
        self.neg_weight = check_real(name, "neg_weight", neg_weight, minimum=0)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        pos_keep_BR = pos_BR > 0
        inverted = self.distance.is_inverted
        with torch.no_grad():
            # hardest positive: least similar (largest distance); +-inf for a row with no positive,
            # which then keeps no negative
            filler = torch.inf if inverted else -torch.inf
            hardest_pos_B = self.distance.largest_dist(mat_BR.masked_fill(~pos_keep_BR, filler), dim=1).values
            if inverted:
                neg_keep_BR = (neg_BR > 0) & (mat_BR > (hardest_pos_B - self.slack)[:, None])
            else:
                neg_keep_BR = (neg_BR > 0) & (mat_BR < (hardest_pos_B + self.slack)[:, None])
        pos_B = _masked_mean(log_one_plus_exp(self.alpha * self.distance.margin(mat_BR, self.margin)), pos_keep_BR)
        neg_B = _masked_mean(log_one_plus_exp(self.beta * self.distance.margin(self.margin, mat_BR)), neg_keep_BR)
        loss_B = pos_B + self.neg_weight * neg_B
        anchors_B = torch.arange(mat_BR.shape[0], device=mat_BR.device)
        return {"loss": {"losses": loss_B, "indices": anchors_B, "reduction_type": "element"}}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, margin={self.margin}, slack={self.slack}, "
                f"neg_weight={self.neg_weight}")
