"""Generalized lifted structure loss: per anchor row, soft maxima over its positives and negatives.

Legend: B queries, R references, mat_BR the distance matrix, pos_BR / neg_BR 0/1 masks of the
positive / negative pairs, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_real


class GeneralizedLiftedStructureLoss(GenericPairLoss):
    """The generalized lifted structure loss (Hermans et al. 2017, "In Defense of the Triplet Loss"),
    for each anchor row a:

        L_a = [ log sum_p exp(d_ap - m_pos) + log sum_n exp(m_neg - d_an) ]_+

    (signs flipped for similarities via `distance.margin`); an empty sum contributes 0. One loss per
    query row, MeanReducer by default.
    """

    uses_masks = True

    def __init__(self, neg_margin: float = 1, pos_margin: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.neg_margin = check_real(owner, "neg_margin", neg_margin)
        self.pos_margin = check_real(owner, "pos_margin", pos_margin)
        self.add_to_recordable_attributes(list_of_names=["pos_margin", "neg_margin"], is_stat=False)

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        pos_B = masked_logsumexp(self.distance.margin(mat_BR, self.pos_margin), pos_BR > 0, add_one=False)
        neg_B = masked_logsumexp(self.distance.margin(self.neg_margin, mat_BR), neg_BR > 0, add_one=False)
        rows_B = torch.arange(len(mat_BR), device=mat_BR.device)
        return {"loss": {"losses": torch.relu(pos_B + neg_B), "indices": rows_B, "reduction_type": "element"}}
