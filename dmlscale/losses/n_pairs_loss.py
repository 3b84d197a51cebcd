"""N-pairs loss: one (anchor, positive) pair per class, each anchor classifying its positive among
the positives of every class.

Legend: B queries, R references, K classes with a pair; anchor_K / pos_K the pair rows, logits_KK the
similarities of the anchors (rows) to the positives (columns).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, DotProductSimilarity
from dmlscale.indices import convert_to_pairs
from dmlscale.losses.base import BaseMetricLossFunction


def first_two_per_label(labels_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each label with at least two rows, its first and second row (in row order), by label."""
    order_R = torch.argsort(labels_R, stable=True)
    sorted_R = labels_R[order_R]
    is_start_R = torch.ones_like(sorted_R, dtype=torch.bool)
    is_start_R[1:] = sorted_R[1:] != sorted_R[:-1]
    start_G = torch.where(is_start_R)[0]
    has_pair_G = torch.diff(start_G, append=torch.tensor([len(sorted_R)], device=start_G.device)) >= 2
    start_K = start_G[has_pair_G]
    return order_R[start_K], order_R[start_K + 1]


class NPairsLoss(BaseMetricLossFunction):
    """N-pairs loss (Sohn 2016). Per class k, its first two rows form the pair (a_k, p_k), and

        L_k = -log softmax_j(s(a_k, p_j))[k]

    over the K classes with a pair (s = -d for a distance); MeanReducer over the K anchors, default
    DotProductSimilarity. With an indices_tuple the pair of a class is its first positive pair there.

    PML refuses `ref_emb`. Here the pairs come from the reference batch and each rank computes the
    rows of the anchors it holds as queries (`query_ref_index`), so DistributedLoss is exact; a
    ref_emb holding none of the queries (query_ref_index all -1) is refused like PML does.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(name="num_pairs", is_stat=True)

    def get_default_distance(self) -> BaseDistance:
        return DotProductSimilarity()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        self.require_labels(labels, indices_tuple, allow_indices=False)
        if bool((query_ref_index < 0).all()):
            raise ValueError("NPairsLoss takes its pairs from the batch itself: a ref_emb is supported only with a "
                             "query_ref_index naming the query rows inside it (as DistributedLoss passes)")
        if indices_tuple is None:
            anchor_ref_K, pos_K = first_two_per_label(ref_labels)
            ref_to_query_R = torch.full((len(ref_emb),), -1, dtype=torch.long, device=embeddings.device)
            has_self_B = query_ref_index >= 0
            ref_to_query_R[query_ref_index[has_self_B]] = torch.where(has_self_B)[0]
            anchor_K = ref_to_query_R[anchor_ref_K]
            target_rows = torch.where(anchor_K >= 0)[0]  # the pairs whose anchor is one of these queries
            anchor_Q = anchor_K[target_rows]
        else:
            a1, p, _, _ = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
            order = torch.argsort(labels[a1], stable=True)
            sorted_labels = labels[a1][order]
            first = torch.ones_like(sorted_labels, dtype=torch.bool)
            first[1:] = sorted_labels[1:] != sorted_labels[:-1]
            anchor_Q, pos_K = a1[order[first]], p[order[first]]
            target_rows = torch.arange(len(anchor_Q), device=embeddings.device)
        self.num_pairs = len(pos_K)
        if len(anchor_Q) == 0:
            return self.zero_losses()
        mat_QK = self.distance(embeddings[anchor_Q], ref_emb[pos_K])
        logits_QK = mat_QK if self.distance.is_inverted else -mat_QK
        losses_Q = F.cross_entropy(logits_QK, target_rows, reduction="none")
        return {"loss": {"losses": losses_Q, "indices": anchor_Q, "reduction_type": "element"}}
