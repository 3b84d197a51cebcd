"""Intra-pair variance loss: penalises positive (negative) pairs that stray from the mean of their kind.

Legend: P positive pairs, N negative pairs; pos_P / neg_N their values (similarities or distances).

The means are over all the pairs of the call, so the loss is not a sum over query rows: DistributedLoss
refuses it (each rank would use its own pairs' means), see `uses_batch_statistics`.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_real


class IntraPairVarianceLoss(GenericPairLoss):
    """Intra-pair variance loss (Yu et al. 2019), for similarities s with means mu_pos, mu_neg over
    the positive and negative pairs:

        L_pos = [(1 - pos_eps) mu_pos - s_ap]_+^2 per positive pair,
        L_neg = [s_an - (1 + neg_eps) mu_neg]_+^2 per negative pair

    (for a distance, the roles swap: [d_ap - (1 + pos_eps) mu_pos]_+^2 and [(1 - neg_eps) mu_neg - d_an]_+^2).
    The means keep their gradient. Each part is reduced on its own (MeanReducer) and the two are summed.
    """

    uses_batch_statistics = True

    def __init__(self, pos_eps: float = 0.01, neg_eps: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.pos_eps = check_real(owner, "pos_eps", pos_eps)
        self.neg_eps = check_real(owner, "neg_eps", neg_eps)
        self.add_to_recordable_attributes(list_of_names=["pos_eps", "neg_eps"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]

    def pair_loss(self, pos_P: torch.Tensor, neg_N: torch.Tensor, pairs: tuple,
                  mat_BR: torch.Tensor | None) -> dict:
        inverted = self.distance.is_inverted
        pos_loss = self.spread(pos_P, self.pos_eps, below_mean=inverted) if len(pos_P) > 0 else 0
        neg_loss = self.spread(neg_N, self.neg_eps, below_mean=not inverted) if len(neg_N) > 0 else 0
        return {
            "pos_loss": {"losses": pos_loss, "indices": pairs[:2], "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_loss, "indices": pairs[2:], "reduction_type": "neg_pair"},
        }

    @staticmethod
    def spread(values: torch.Tensor, eps: float, *, below_mean: bool) -> torch.Tensor:
        """[(1 - eps) mean - v]_+^2 when falling below the mean is penalised, else [v - (1 + eps) mean]_+^2."""
        mean = values.mean()
        excess = (1 - eps) * mean - values if below_mean else values - (1 + eps) * mean
        return torch.relu(excess) ** 2
