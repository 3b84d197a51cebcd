"""Smooth-AP: 1 - a smoothed average precision per query, its rank indicators replaced by sigmoids.

Legend: B queries, R references; sim_BR cosine similarities, member_BR the references of the query's
class (its own column included), above_BRR[b, i, j] = sigmoid((s_bj - s_bi) / temperature) for j != i,
rank_all_BR / rank_pos_BR the soft ranks of reference i among all references / among the class.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.indices import anchor_weights, self_mask
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive


class SmoothAPLoss(BaseMetricLossFunction):
    """Smooth-AP (Brown et al. 2020). For a query q with class members P_q (itself included):

        AP_q = 1/|P_q| sum_{i in P_q} (1 + sum_{j in P_q, j != i} sig_qij) / (1 + sum_{j != i} sig_qij),
        sig_qij = sigmoid((s_qj - s_qi) / temperature),   L_q = (1 - AP_q) * w_q

    with w_q how often q appears in an indices_tuple (1 without one); MeanReducer over the queries
    (sub-loss "ap_loss"). CosineSimilarity only.

    Differences from PML, which reads the classes from the batch layout: PML needs equally many rows
    per class, and its grouping is right only for contiguous class blocks with as many classes as rows
    per class (a PML bug otherwise); here the classes come from the labels, any layout and class sizes
    work, and `ref_emb` (refused by PML) is supported, so DistributedLoss is exact.
    """

    def __init__(self, temperature: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        self.temperature = check_positive(type(self).__name__, "temperature", temperature)
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def _sub_loss_names(self) -> list[str]:
        return ["ap_loss"]

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, allow_indices=False)
        dtype, device = embeddings.dtype, embeddings.device
        weights_B = anchor_weights(indices_tuple, len(embeddings), dtype, device, using_ref=ref_emb is not embeddings)
        member_BR = (labels[:, None] == ref_labels[None, :]) | self_mask(query_ref_index, len(ref_emb))
        has_member_B = member_BR.any(dim=1)
        if not bool(has_member_B.any()):
            return self.zero_losses()
        member_BR = member_BR.to(dtype)
        sim_BR = self.distance(embeddings, ref_emb)
        not_self_RR = 1.0 - torch.eye(len(ref_emb), dtype=dtype, device=device)
        above_BRR = torch.sigmoid((sim_BR[:, None, :] - sim_BR[:, :, None]) / self.temperature) * not_self_RR
        rank_all_BR = above_BRR.sum(dim=-1) + 1
        rank_pos_BR = (above_BRR * member_BR[:, None, :]).sum(dim=-1) + 1
        del above_BRR
        ap_B = (rank_pos_BR / rank_all_BR * member_BR).sum(dim=1) / member_BR.sum(dim=1).clamp(min=1)
        losses = ((1 - ap_B) * weights_B)[has_member_B]
        return {"ap_loss": {"losses": losses, "indices": torch.where(has_member_B)[0], "reduction_type": "element"}}
