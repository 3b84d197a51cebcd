"""Center-invariant regularizer (Wu et al. 2017, "Deep face recognition with center invariant loss"):
class weights of equal norm.

Legend: N rows (class weights), D their size; sq_norm_N the squared row norms.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, LpDistance
from dmlscale.regularizers.base_regularizer import BaseRegularizer, element_losses


class CenterInvariantRegularizer(BaseRegularizer):
    """R = mean_i (||w_i||^2 - mean_j ||w_j||^2)^2 / 4, norms in the distance's p-norm; the distance must be
    LpDistance(power=1, normalize_embeddings=False) (the default)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.require_distance(LpDistance, power=1, normalize_embeddings=False)

    def get_default_distance(self) -> BaseDistance:
        return LpDistance(power=1, normalize_embeddings=False)

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        sq_norm_N = self.distance.get_norm(rows_ND) ** 2
        return element_losses((sq_norm_N - sq_norm_N.mean()) ** 2 / 4)
