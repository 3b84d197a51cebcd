"""RegularFace (Zhao et al. 2019, CVPR): spread class weights apart by penalising each one's closest neighbour.

Legend: C rows (class weights), D their size; sim_CC the pairwise similarities, nearest_C each row's closest
other row.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.regularizers.base_regularizer import BaseRegularizer, element_losses


class RegularFaceRegularizer(BaseRegularizer):
    """R = mean_i max_{j != i} s(w_i, w_j), s a similarity (CosineSimilarity by default; a distance is refused).
    The gradient reaches only the closest pair of each row. With one row, the row is its own neighbour (PML)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.distance.is_inverted:
            raise ValueError(f"RegularFaceRegularizer needs a similarity (is_inverted=True), got "
                             f"{type(self.distance).__name__}")

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        sim_CC = self.distance(rows_ND)
        with torch.no_grad():
            others_CC = sim_CC.clone()
            others_CC.fill_diagonal_(torch.finfo(sim_CC.dtype).min)
            nearest_C = torch.max(others_CC, dim=1).indices
        return element_losses(sim_CC.gather(1, nearest_C[:, None]).squeeze(1))
