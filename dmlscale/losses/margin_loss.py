"""Margin loss: triplets whose positive must sit inside, and negative outside, a boundary beta.

Legend: B queries, R references, T triplets; mat_BR the distance matrix, beta_T the boundary each
triplet's anchor uses, pos_T / neg_T its two hinge terms.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.indices import convert_to_triplets
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import BaseReducer, DivisorReducer
from dmlscale.param_checks import check_positive_int, check_real


class MarginLoss(BaseMetricLossFunction):
    """Margin loss (Wu et al. 2017, "Sampling Matters"), per triplet (a, p, n):

        L_apn = [d_ap - beta + margin]_+ + [beta - d_an + margin]_+

    (signs flipped for similarities via `distance.margin`), summed and divided by the number of
    active hinge terms (DivisorReducer, the default). beta is one number, or one per class with
    `num_classes`; with `learn_beta` it is a parameter, regularised by `beta_reg_loss` = nu * beta.
    Under DistributedLoss the divisor is global; a single learned beta's regulariser is an
    already-reduced value, which DistributedLoss refuses (use num_classes, or learn_beta=False).
    """

    def __init__(self, margin: float = 0.2, nu: float = 0, beta: float = 1.2, triplets_per_anchor: int | str = "all",
                 learn_beta: bool = False, num_classes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.margin = check_real(owner, "margin", margin)
        self.nu = check_real(owner, "nu", nu)
        check_real(owner, "beta", beta)
        self.triplets_per_anchor = check_positive_int(owner, "triplets_per_anchor", triplets_per_anchor,
                                                      alternatives=("all",))
        if num_classes is not None:
            check_positive_int(owner, "num_classes", num_classes)
        self.learn_beta = learn_beta
        self.num_classes = num_classes
        beta_C = torch.full((num_classes or 1,), float(beta))
        self.beta = torch.nn.Parameter(beta_C) if learn_beta else beta_C
        self.add_to_recordable_attributes(list_of_names=["margin", "nu", "beta"], is_stat=False)

    def get_default_reducer(self) -> BaseReducer:
        return DivisorReducer()

    def _sub_loss_names(self) -> list[str]:
        return ["margin_loss", "beta_reg_loss"]

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple, allow_indices=self.num_classes is None)
        a_T, p_T, n_T = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor,
                                            query_ref_index=query_ref_index)
        if len(a_T) == 0:
            return self.zero_losses()
        beta = self.beta.to(device=embeddings.device, dtype=embeddings.dtype)
        beta_T = beta if len(beta) == 1 else beta[labels[a_T]]
        mat_BR = self.distance(embeddings, ref_emb)
        pos_T = torch.relu(self.distance.margin(mat_BR[a_T, p_T], beta_T) + self.margin)
        neg_T = torch.relu(self.distance.margin(beta_T, mat_BR[a_T, n_T]) + self.margin)
        divisor = int((pos_T > 0).sum()) + int((neg_T > 0).sum())
        loss = {"losses": pos_T + neg_T, "indices": (a_T, p_T, n_T), "reduction_type": "triplet", "divisor": divisor}
        return {"margin_loss": loss, "beta_reg_loss": self.beta_regulariser(beta_T, a_T, divisor)}

    def beta_regulariser(self, beta_T: torch.Tensor, a_T: torch.Tensor, divisor: int) -> dict:
        if not self.learn_beta:
            return {"losses": 0, "indices": None, "reduction_type": "already_reduced"}
        if len(beta_T) == 1:
            return {"losses": (beta_T * self.nu).reshape(()), "indices": None, "reduction_type": "already_reduced"}
        return {"losses": beta_T * self.nu, "indices": a_T, "reduction_type": "element", "divisor": divisor}
