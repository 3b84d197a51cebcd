"""NCA loss: each sample's chance of picking a same-class neighbour under a softmax over the batch.

Legend: B queries, R references, D embedding size; mat_BR the distance matrix, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.indices import anchor_weights, self_mask
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive


class NCALoss(BaseMetricLossFunction):
    """Neighbourhood Components Analysis (Goldberger et al. 2004): with l = softmax_scale * (-d or s),

        L_a = -log sum_{r: y_r = y_a, r != self(a)} softmax_r(l_a.)   (the chance a picks a same-class neighbour)

    where self(a) = query_ref_index[a], a's own reference row, is left out of the softmax,

    times a miner weight per anchor (how often it appears in indices_tuple, relative to the most
    frequent); anchors with no same-class reference are dropped. Default distance squared Euclidean.
    """

    def __init__(self, softmax_scale: float = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(type(self).__name__, "softmax_scale", softmax_scale)
        self.softmax_scale = softmax_scale
        self.add_to_recordable_attributes(list_of_names=["softmax_scale"], is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(power=2)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        if len(embeddings) <= 1:
            return self.zero_losses()
        self.require_labels(labels, allow_indices=False)
        dtype, device = embeddings.dtype, embeddings.device
        # using_ref: ref_emb was given (PML: then only anchors count); resolve_inputs hands the query
        # tensor itself back as ref_emb otherwise
        weights_B = anchor_weights(indices_tuple, len(embeddings), dtype, device, using_ref=ref_emb is not embeddings)
        mat_BR = self.distance(embeddings, ref_emb)
        closeness_BR = mat_BR if self.distance.is_inverted else -mat_BR
        # each row's own sample leaves the softmax
        closeness_BR = closeness_BR.masked_fill(self_mask(query_ref_index, len(ref_emb)), torch.finfo(dtype).min)
        same_BR = (labels[:, None] == ref_labels[None, :]).to(dtype)
        return self.nca_terms(closeness_BR, same_BR, weights_B)

    def nca_terms(self, closeness_BR: torch.Tensor, same_BR: torch.Tensor, weights_B: torch.Tensor) -> dict:
        """-log of each query's softmax mass on its same-class references, times its weight; a query with
        no such mass (no same-class reference, or an underflow to 0) is dropped, as in PML."""
        prob_same_B = (F.softmax(self.softmax_scale * closeness_BR, dim=1) * same_BR).sum(dim=1)
        kept_B = prob_same_B != 0
        losses = -torch.log(prob_same_B[kept_B]) * weights_B[kept_B]
        indices = torch.arange(len(closeness_BR), device=closeness_BR.device)[kept_B]
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}}
