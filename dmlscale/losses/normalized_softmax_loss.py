"""Normalized softmax (NormFace, Wang et al. 2017; Zhai & Wu 2018, arXiv:1811.12649): cross-entropy over
temperature-scaled similarities to unit-norm class weights.

Legend: B queries, C classes, D embedding size; W_DC the class weights, unit_W_DC normalised columns,
logits_BC one logit per (sample, class).
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, DotProductSimilarity
from dmlscale.losses.class_weight_loss import ClassWeightLoss
from dmlscale.param_checks import check_positive


class NormalizedSoftmaxLoss(ClassWeightLoss):
    """L_i = -log softmax_j( s(x_i, W_j / ||W_j||) / T )_{y_i}

    with s the distance's similarity (the default DotProductSimilarity normalises the embeddings too, so s is
    the cosine) or minus the distance for a distance (LpDistance, ...); temperature T = 0.05.
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05, **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        self.temperature = check_positive(type(self).__name__, "temperature", temperature)
        self.add_to_recordable_attributes(list_of_names=["embedding_size", "num_classes", "temperature"],
                                          is_stat=False)

    def get_default_distance(self) -> BaseDistance:
        return DotProductSimilarity()

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        unit_W_DC = self.distance.normalize(self.class_weights(embeddings), dim=0)
        logits_BC = self.distance(embeddings, unit_W_DC.t()) / self.temperature
        return logits_BC if self.distance.is_inverted else -logits_BC

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
