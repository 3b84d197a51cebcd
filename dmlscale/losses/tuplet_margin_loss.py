"""Tuplet margin loss: each positive pair, its angle widened by a margin, against the anchor's negatives.

Legend: B queries, R references, P positive pairs, N negative pairs; pos_P / neg_N cosine
similarities, logits_PN one term per (positive pair, negative pair), same_anchor_PN the mask of the
negative pairs that share the positive pair's anchor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_positive, check_real


class TupletMarginLoss(GenericPairLoss):
    """Tuplet margin loss (Yu and Tao 2019) on cosine similarities, for a positive pair (a, p):

        L_ap = log(1 + sum_{n in N_a} exp(scale (s_an - cos(theta_ap - margin)))),  theta_ap = arccos(s_ap)

    with `margin` in degrees (stored in degrees; PML stores radians). MeanReducer over the positive
    pairs by default; CosineSimilarity only.
    """

    def __init__(self, margin: float = 5.73, scale: float = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        owner = type(self).__name__
        self.margin = check_real(owner, "margin", margin)  # degrees
        self.scale = check_positive(owner, "scale", scale)
        self.add_to_recordable_attributes(list_of_names=["margin", "scale"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def pair_loss(self, pos_P: torch.Tensor, neg_N: torch.Tensor, pairs: tuple,
                  mat_BR: torch.Tensor | None) -> dict:
        a1, p, a2, _ = pairs
        if len(a1) == 0 or len(a2) == 0:
            return self.zero_losses()
        widened_P = torch.cos(torch.acos(pos_P) - math.radians(self.margin))
        logits_PN = self.scale * (neg_N[None, :] - widened_P[:, None])
        same_anchor_PN = a2[None, :] == a1[:, None]
        losses_P = masked_logsumexp(logits_PN, same_anchor_PN, add_one=True)
        return {"loss": {"losses": losses_P, "indices": (a1, p), "reduction_type": "pos_pair"}}
