"""Instance loss: each row classifies itself among the reference rows, by softmax over scaled cosine
similarities.

Legend: B queries, R references; logits_BR gamma times the cosine similarities, target_B the
reference column each query must pick.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive


class InstanceLoss(BaseMetricLossFunction):
    """Instance loss (Zheng et al. 2020, "Dual-Path Convolutional Image-Text Embeddings"), per query q:

        L_q = -log softmax_r(gamma * cos(x_q, x_r))[t_q],   t_q = the first reference row with q's label

    MeanReducer over the queries with such a row; CosineSimilarity only; no indices_tuple.

    Differences from PML: PML's target is the rank of q's label among the batch's distinct labels,
    which names a row of q's class only when the labels are distinct and sorted (such as arange(B), the
    one-instance-per-row case, where both agree); for other labels it points at rows of other classes
    (a PML bug). PML also refuses `ref_emb`; here it works, so DistributedLoss is exact.
    """

    def __init__(self, gamma: float = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        self.gamma = check_positive(type(self).__name__, "gamma", gamma)
        self.add_to_recordable_attributes(list_of_names=["gamma"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, allow_indices=False)
        self.refuse_indices_tuple(indices_tuple)
        same_BR = labels[:, None] == ref_labels[None, :]
        has_target_B = same_BR.any(dim=1)
        if not bool(has_target_B.any()):
            return self.zero_losses()
        target_B = torch.argmax(same_BR.to(torch.uint8), dim=1)  # the first True of each row
        logits_BR = self.distance(embeddings, ref_emb) * self.gamma
        losses = F.cross_entropy(logits_BR[has_target_B], target_B[has_target_B], reduction="none")
        return {"loss": {"losses": losses, "indices": torch.where(has_target_B)[0], "reduction_type": "element"}}
