"""Threshold-consistent margin loss: mean hinges of the positive pairs below m+ and the negative pairs
above m-, on cosine similarity.

Legend: P positive pairs, N negative pairs; pos_P / neg_N their cosine similarities, *_kept the
terms of the pairs that violate their margin.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.losses.generic_pair_loss import GenericPairLoss
from dmlscale.param_checks import check_real


class ThresholdConsistentMarginLoss(GenericPairLoss):
    """TCM loss (Zhang et al. 2023) on cosine similarities s:

        L = lambda_plus  * mean_{p: s_ap <= margin_plus}  (margin_plus - s_ap)
          + lambda_minus * mean_{n: s_an >= margin_minus} (s_an - margin_minus)

    an empty mean being 0. Each part is a sub-loss of its kept (weighted) terms, reduced by
    MeanReducer, which gives PML's single already-reduced value and lets DistributedLoss average the
    terms over all ranks. CosineSimilarity only. Under ref_emb the pairs' second ends come from
    ref_emb (PML takes them from the query batch, a PML bug).
    """

    def __init__(self, lambda_plus: float = 1.0, lambda_minus: float = 1.0, margin_plus: float = 0.9,
                 margin_minus: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        owner = type(self).__name__
        self.lambda_plus = check_real(owner, "lambda_plus", lambda_plus)
        self.lambda_minus = check_real(owner, "lambda_minus", lambda_minus)
        self.margin_plus = check_real(owner, "margin_plus", margin_plus)
        self.margin_minus = check_real(owner, "margin_minus", margin_minus)
        self.add_to_recordable_attributes(
            list_of_names=["lambda_plus", "lambda_minus", "margin_plus", "margin_minus"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]

    def pair_loss(self, pos_P: torch.Tensor, neg_N: torch.Tensor, pairs: tuple,
                  mat_BR: torch.Tensor | None) -> dict:
        a1, p, a2, n = pairs
        pos_kept = pos_P <= self.margin_plus
        neg_kept = neg_N >= self.margin_minus
        pos_terms = self.lambda_plus * (self.margin_plus - pos_P[pos_kept])
        neg_terms = self.lambda_minus * (neg_N[neg_kept] - self.margin_minus)
        return {
            "pos_loss": {"losses": pos_terms if len(pos_terms) else 0, "indices": (a1[pos_kept], p[pos_kept]),
                         "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_terms if len(neg_terms) else 0, "indices": (a2[neg_kept], n[neg_kept]),
                         "reduction_type": "neg_pair"},
        }
