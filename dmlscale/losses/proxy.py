"""Losses that compare samples with a soft neighbourhood or a learned per-class point: NCA and Center loss.

Legend: B queries, R references, C classes, D embedding size; mat_BR the distance matrix,
centres_CD the learned class centres, *_B one value per query row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.indices import anchor_weights, self_mask
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive, check_positive_int


class NCALoss(BaseMetricLossFunction):
    """Neighbourhood Components Analysis (Goldberger et al. 2004): with l = softmax_scale * (-d or s),

        L_a = -log sum_{r: y_r = y_a, r != self(a)} softmax_r(l_a.)   (the chance a picks a same-class neighbour)

    where self(a) = query_ref_index[a], a's own reference row, is left out of the softmax,

    times a miner weight per anchor (how often it appears in indices_tuple, relative to the most
    frequent); anchors with no same-class reference are dropped. Default distance squared Euclidean.
    """

    def __init__(self, softmax_scale: float = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        check_positive(type(self).__name__, "softmax_scale", softmax_scale)
        self.softmax_scale = softmax_scale
        self.add_to_recordable_attributes(list_of_names=["softmax_scale"], is_stat=False)

    def get_default_distance(self):
        return LpDistance(power=2)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index) -> dict:
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
        prob_same_B = (F.softmax(self.softmax_scale * closeness_BR, dim=1) * same_BR).sum(dim=1)
        kept_B = prob_same_B != 0
        losses = -torch.log(prob_same_B[kept_B]) * weights_B[kept_B]
        indices = torch.arange(len(embeddings), device=device)[kept_B]
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}}


class CenterLoss(BaseMetricLossFunction):
    """Center loss (Wen et al. 2016) with learnable class centres c_k (an nn.Parameter of C x D):

        L = mean_i d(x_i, c_{y_i})     default d = ||x - c||_2^2 (LpDistance(power=2, no normalisation))

    i.e. without Wen et al.'s factor 1/2 (their L_C = 1/2 sum_i ||x_i - c_{y_i}||^2 over a batch of m
    equals m/2 times ours; fold such factors into the weight lambda). The reducer sees one loss per
    sample (MeanReducer by default), weighted by how often the sample appears in indices_tuple if
    one is given. The distance is evaluated only on the B aligned (sample, own centre) rows, never the
    B x C matrix, so C can be large. Centres move by the optimiser (give them to it with the model),
    not by Wen et al.'s separate centre update rule.
    """

    compares_to_reference = False

    def __init__(self, num_classes: int, embedding_size: int, **kwargs) -> None:
        check_positive_int(type(self).__name__, "num_classes", num_classes)
        check_positive_int(type(self).__name__, "embedding_size", embedding_size)
        super().__init__(**kwargs)
        if self.distance.is_inverted:
            raise ValueError(
                f"CenterLoss needs a distance (smaller is closer), got the similarity {type(self.distance).__name__}"
            )
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centres_CD = torch.nn.Parameter(torch.randn(num_classes, embedding_size))

    def get_default_distance(self):
        return LpDistance(normalize_embeddings=False, power=2)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, query_ref_index) -> dict:
        if ref_emb is not embeddings:
            raise ValueError("CenterLoss compares embeddings with its class centres; ref_emb is not supported")
        self.require_labels(labels, allow_indices=False)
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have size {embeddings.shape[1]}, CenterLoss was built for {self.embedding_size}"
            )
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"label {int(labels[bad][0])} is outside [0, {self.num_classes}) "
                f"({int(bad.sum())} bad labels in the batch)"
            )
        centres_BD = self.centres_CD.to(embeddings.dtype)[labels]
        losses_B = aligned_distance(self.distance, embeddings, centres_BD)
        if indices_tuple is not None:
            losses_B = losses_B * anchor_weights(indices_tuple, len(embeddings), embeddings.dtype, embeddings.device)
        indices_B = torch.arange(len(embeddings), device=embeddings.device)
        return {"loss": {"losses": losses_B, "indices": indices_B, "reduction_type": "element"}}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


def aligned_distance(distance: BaseDistance, x_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    """d(x_i, y_i) for aligned rows, with the distance's normalisation and power.

    For LpDistance the norm is taken exactly (no epsilon, unlike F.pairwise_distance), and the
    squared Euclidean case is a plain sum of squares so its gradient is smooth at x = y.
    """
    x_BD, y_BD = distance.maybe_normalize(x_BD), distance.maybe_normalize(y_BD)
    if isinstance(distance, LpDistance):
        diff_BD = x_BD - y_BD
        if distance.p == 2 and distance.power == 2:
            return (diff_BD * diff_BD).sum(dim=1)
        dist_B = torch.linalg.vector_norm(diff_BD, ord=distance.p, dim=1)
    else:
        dist_B = distance.pairwise_distance(x_BD, y_BD)
    return dist_B if distance.power == 1 else dist_B**distance.power
