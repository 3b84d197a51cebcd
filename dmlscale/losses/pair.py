"""Pair losses: a shared pair-extraction step (GenericPairLoss) and the contrastive loss.

Legend: B queries, R references, P positive pairs, N negative pairs; mat_BR the distance matrix.
"""

from __future__ import annotations

import torch.nn.functional as F

from dmlscale.indices import convert_to_pairs, pair_masks
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.losses.reducers import AvgNonZeroReducer


class GenericPairLoss(BaseMetricLossFunction):
    """Resolve (a1, p, a2, n) pairs, compute the distance matrix once, hand either the pair values
    (`pair_loss`) or dense 0/1 masks (`mask_loss`) to the subclass."""

    uses_masks = False

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index) -> dict:
        self.require_labels(labels, indices_tuple)
        pairs = convert_to_pairs(indices_tuple, labels, ref_labels, query_ref_index)
        if all(len(x) <= 1 for x in pairs):
            return self.zero_losses()
        mat_BR = self.distance(embeddings, ref_emb)
        if self.uses_masks:
            pos_BR, neg_BR = pair_masks(pairs, mat_BR.shape[0], mat_BR.shape[1], mat_BR.dtype, mat_BR.device)
            return self.mask_loss(mat_BR, pos_BR, neg_BR)
        a1, p, a2, n = pairs
        return self.pair_loss(mat_BR[a1, p], mat_BR[a2, n], pairs, mat_BR)

    def pair_loss(self, pos_P, neg_N, pairs, mat_BR) -> dict:
        raise NotImplementedError

    def mask_loss(self, mat_BR, pos_BR, neg_BR) -> dict:
        raise NotImplementedError


class ContrastiveLoss(GenericPairLoss):
    """L = [d_ap - m_pos]_+ over positive pairs, plus [m_neg - d_an]_+ over negative pairs
    (terms swapped for similarities); each part is reduced separately and the two are summed."""

    def __init__(self, pos_margin: float = 0, neg_margin: float = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def get_default_reducer(self):
        return AvgNonZeroReducer()

    def sub_loss_names(self) -> list[str]:
        return ["pos_loss", "neg_loss"]

    def pair_loss(self, pos_P, neg_N, pairs, mat_BR) -> dict:
        pos_loss = F.relu(self.distance.margin(pos_P, self.pos_margin)) if len(pos_P) > 0 else 0
        neg_loss = F.relu(self.distance.margin(self.neg_margin, neg_N)) if len(neg_N) > 0 else 0
        return {
            "pos_loss": {"losses": pos_loss, "indices": pairs[:2], "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_loss, "indices": pairs[2:], "reduction_type": "neg_pair"},
        }
