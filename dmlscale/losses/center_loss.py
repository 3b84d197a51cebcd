"""Center loss: the distance of each sample to a learned centre of its class.

Legend: B queries, C classes, D embedding size; centres_CD the learned class centres, centres_BD
each sample's own centre, *_B one value per query row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.indices import anchor_weights
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int


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

    def __init__(self, num_classes: int, embedding_size: int, **kwargs: Any) -> None:
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

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(normalize_embeddings=False, power=2)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
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
