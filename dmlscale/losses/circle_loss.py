"""Circle loss: per-row soft maxima (masked log-sum-exp) over positives and negatives, with
self-paced weights.

Legend: B queries, R references, mat_BR the cosine similarity matrix, pos_BR / neg_BR 0/1 masks of
the positive / negative pairs, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.kernels.logsumexp import masked_logsumexp
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.losses.reducers import AvgNonZeroReducer, BaseReducer
from dmlscale.param_checks import check_positive, check_real


class CircleLoss(GenericPairLoss):
    """Circle loss (Sun et al. 2020) on cosine similarities s, for each anchor row a:

        L_a = softplus( log sum_p exp(-gamma [1 + m - s_ap]_+ (s_ap - (1 - m)))
                      + log sum_n exp( gamma [s_an + m]_+     (s_an - m)) )

    with the weights [.]_+ detached (as in the paper), and L_a = 0 for rows lacking positives or
    negatives. AvgNonZeroReducer by default.
    """

    uses_masks = True

    def __init__(self, m: float = 0.4, gamma: float = 80, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        owner = type(self).__name__
        check_real(owner, "m", m, finite=False)
        check_positive(owner, "gamma", gamma)
        self.m, self.gamma = m, gamma
        self.op, self.on = 1 + m, -m  # optimum similarity of positives / negatives
        self.delta_p, self.delta_n = 1 - m, m  # decision margins
        self.add_to_recordable_attributes(list_of_names=["m", "gamma", "op", "on", "delta_p", "delta_n"],
                                          is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def get_default_reducer(self) -> BaseReducer:
        return AvgNonZeroReducer()

    def mask_loss(self, mat_BR: torch.Tensor, pos_BR: torch.Tensor, neg_BR: torch.Tensor) -> dict:
        is_pos_BR, is_neg_BR = pos_BR > 0, neg_BR > 0
        sim_BR = mat_BR.detach()
        pos_logits_BR = -self.gamma * torch.relu(self.op - sim_BR) * (mat_BR - self.delta_p)
        neg_logits_BR = self.gamma * torch.relu(sim_BR - self.on) * (mat_BR - self.delta_n)
        logits_BR = torch.where(is_pos_BR, pos_logits_BR, torch.where(is_neg_BR, neg_logits_BR, 0.0))
        del pos_logits_BR, neg_logits_BR
        lse_pos_B = masked_logsumexp(logits_BR, is_pos_BR, add_one=False)
        lse_neg_B = masked_logsumexp(logits_BR, is_neg_BR, add_one=False)
        has_both_B = is_pos_BR.any(dim=1) & is_neg_BR.any(dim=1)
        losses_B = F.softplus(lse_pos_B + lse_neg_B) * has_both_B.to(mat_BR.dtype)
        return {"loss": {"losses": losses_B, "indices": torch.arange(len(mat_BR), device=mat_BR.device), "reduction_type": "element"}}
