"""PNP loss: per query, a smoothed count of the negatives ranked above each positive, transformed by
the chosen variant and averaged.

Legend: B queries, R references; sim_BR cosine similarities, member_BR the query's positives (and its
own column when it has positives), neg_BR its negatives, above_BRR[b, i, j] the soft indicator that
reference j ranks above reference i for query b, rank_BR the soft count of negatives above i.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import matches_and_diffs, self_mask
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive, check_real


class PNPLoss(BaseMetricLossFunction):
    """PNP loss (Li et al. 2022, "Rethinking the Optimization of Average Precision"). For a query q with
    positives P_q (its own column included), N_q its negatives and
    r_qi = sum_{n in N_q} sigmoid((s_qn - s_qi) / anneal) (exponent clamped to [-50, 50]):

        L_q = mean_{i in P_q} f(r_qi),  f = r (O), log(1 + r) (Ds), (1 + r) log(1 + r) (Iu),
              (b r - log(1 + b r)) / b^2 (Ib);  for Dq, L_q = 1 - mean_i (1 + r_qi)^(-alpha)

    One loss per query with a positive, MeanReducer (PML's single value is that mean). CosineSimilarity
    only. PML refuses `ref_emb`; here the references may be any batch (own column through
    `query_ref_index`), so DistributedLoss and CrossBatchMemory work. An indices_tuple is refused.
    """

    VARIANTS = ["Ds", "Dq", "Iu", "Ib", "O"]

    def __init__(self, b: float = 2, alpha: float = 1, anneal: float = 0.01, variant: str = "O",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        owner = type(self).__name__
        if variant not in self.VARIANTS:
            raise ValueError(f"{owner}: variant must be one of {self.VARIANTS}, got {variant!r}")
        self.b = check_positive(owner, "b", b)
        self.alpha = check_real(owner, "alpha", alpha)
        self.anneal = check_positive(owner, "anneal", anneal)
        self.variant = variant
        self.add_to_recordable_attributes(list_of_names=["b", "alpha", "anneal"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, allow_indices=False)
        self.refuse_indices_tuple(indices_tuple)
        dtype = embeddings.dtype
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        has_pos_B = same_BR.any(dim=1)
        if not bool(has_pos_B.any()):
            return self.zero_losses()
        member_BR = (same_BR | (self_mask(query_ref_index, len(ref_emb)) & has_pos_B[:, None])).to(dtype)
        sim_BR = self.distance(embeddings, ref_emb)
        exponent_BRR = torch.clamp(-(sim_BR[:, None, :] - sim_BR[:, :, None]) / self.anneal, min=-50, max=50)
        above_BRR = 1.0 / (1.0 + torch.exp(exponent_BRR))
        rank_BR = (above_BRR * diff_BR.to(dtype)[:, None, :]).sum(dim=-1)
        del exponent_BRR, above_BRR
        score_BR = self.transform(rank_BR)
        mean_B = (score_BR * member_BR).sum(dim=1)[has_pos_B] / member_BR.sum(dim=1)[has_pos_B]
        losses = 1 - mean_B if self.variant == "Dq" else mean_B
        return {"loss": {"losses": losses, "indices": torch.where(has_pos_B)[0], "reduction_type": "element"}}

    def transform(self, rank_BR: torch.Tensor) -> torch.Tensor:
        if self.variant == "Ds":
            return torch.log(1 + rank_BR)
        if self.variant == "Dq":
            return 1 / (1 + rank_BR) ** self.alpha
        if self.variant == "Iu":
            return (1 + rank_BR) * torch.log(1 + rank_BR)
        if self.variant == "Ib":
            return (self.b * rank_BR - torch.log(1 + self.b * rank_BR)) / self.b ** 2
        return rank_BR
