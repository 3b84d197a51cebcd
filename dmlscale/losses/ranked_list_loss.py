"""Ranked list loss: per query, weighted hinges pulling its positives inside alpha - margin and
pushing its negatives beyond alpha.

Legend: B queries, R references; mat_BR the distance matrix, pos_BR / neg_BR the selected positive /
negative pairs (violators only), w_pos_BR / w_neg_BR their weights, *_B one value per query row.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.indices import matches_and_diffs
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_real

# added to every weight of a row's normaliser, so a row with no violator divides by R * SMOOTHING, not 0
SMOOTHING = 1e-5


class RankedListLoss(BaseMetricLossFunction):
    """Ranked list loss (Wang et al. 2019), per query a with distances d (default RLL-Simpler, Tp=0):

        L_a = (1 - imbalance) sum_p w_p (d_ap - (alpha - margin)) / sum_r (w_pr + 1e-5)
            + imbalance       sum_n w_n (alpha - d_an)          / sum_r (w_nr + 1e-5)

    over the positives with d_ap > alpha - margin and the negatives with d_an < alpha (both with d > 0),
    weights w_p = exp(Tp (d_ap - (alpha - margin))), w_n = exp(Tn (alpha - d_an)), and 0 elsewhere;
    the normalisers run over all R references, as in PML. alpha defaults to 1 + margin / 2. MeanReducer.

    PML refuses `ref_emb` and an indices_tuple; here the references may be any batch (self excluded
    through `query_ref_index`), so DistributedLoss and CrossBatchMemory work; tuples are refused.
    """

    def __init__(self, margin: float, Tn: float, imbalance: float = 0.5, alpha: float | None = None,
                 Tp: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.margin = check_real(owner, "margin", margin)
        self.Tn = check_real(owner, "Tn", Tn)
        self.Tp = check_real(owner, "Tp", Tp)
        self.imbalance = check_real(owner, "imbalance", imbalance, minimum=0)
        if self.imbalance > 1:
            raise ValueError(f"{owner}: imbalance must be in [0, 1], got {imbalance!r}")
        self.alpha = 1 + self.margin / 2 if alpha is None else check_real(owner, "alpha", alpha)
        if self.Tp > 5 or self.Tn > 5:
            warnings.warn(f"{owner}: Tp={Tp}, Tn={Tn}: temperatures above 5 may overflow exp()")
        self.add_to_recordable_attributes(list_of_names=["imbalance", "alpha", "margin", "Tp", "Tn"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return LpDistance()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, allow_indices=False)
        self.refuse_indices_tuple(indices_tuple)
        mat_BR = self.distance(embeddings, ref_emb)
        same_BR, diff_BR = matches_and_diffs(labels, ref_labels, query_ref_index)
        pos_boundary = self.alpha - self.margin
        pos_BR = same_BR & (mat_BR > pos_boundary) & (mat_BR > 0)
        neg_BR = diff_BR & (mat_BR < self.alpha) & (mat_BR > 0)
        zero = torch.zeros((), dtype=mat_BR.dtype, device=mat_BR.device)
        w_pos_BR = torch.where(pos_BR, torch.exp(self.Tp * (mat_BR - pos_boundary)), zero)
        w_neg_BR = torch.where(neg_BR, torch.exp(self.Tn * (self.alpha - mat_BR)), zero)
        pos_B = (w_pos_BR * torch.where(pos_BR, mat_BR - pos_boundary, zero)).sum(dim=1)
        pos_B = pos_B / (w_pos_BR + SMOOTHING).sum(dim=1)
        neg_B = (w_neg_BR * torch.where(neg_BR, self.alpha - mat_BR, zero)).sum(dim=1)
        neg_B = neg_B / (w_neg_BR + SMOOTHING).sum(dim=1)
        losses_B = (1 - self.imbalance) * pos_B + self.imbalance * neg_B
        return {"loss": {"losses": losses_B, "indices": torch.arange(len(losses_B), device=losses_B.device),
                         "reduction_type": "element"}}
