"""Sparse-centers regularizer (SoftTriple, Qian et al. 2019): pulls the centers of a class together so that
superfluous ones merge.

Legend: C classes, K centers per class, N = C*K rows laid out class by class, D their size; sim_NN the cosine
similarities, same_NN the pairs (i < j) of centers of one class.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.losses.reducers import BaseReducer, DivisorReducer
from dmlscale.param_checks import check_positive_int
from dmlscale.regularizers.base_regularizer import BaseRegularizer, element_losses


class SparseCentersRegularizer(BaseRegularizer):
    """R = sum_{c, i<j} sqrt(2 + tiny - min(2 s_ij, 2)) / (2 * #pairs), over the pairs of centers of each class
    (s the cosine; the sum over twice the pair count by the default DivisorReducer). `centers_per_class` > 1.
    Records `same_class_center_sim` and `diff_class_center_sim` with collect_stats."""

    def __init__(self, num_classes: int, centers_per_class: int, **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "centers_per_class", centers_per_class)
        if centers_per_class < 2:
            raise ValueError(f"{owner}: centers_per_class must be > 1, got {centers_per_class!r}")
        super().__init__(**kwargs)
        self.require_distance(CosineSimilarity)
        self.num_classes = num_classes
        self.centers_per_class = centers_per_class
        self.add_to_recordable_attributes(list_of_names=["num_classes", "centers_per_class"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=["same_class_center_sim", "diff_class_center_sim"],
                                          is_stat=True)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def get_default_reducer(self) -> BaseReducer:
        return DivisorReducer()

    def class_masks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(same_NN: pairs i < j within a class, diff_NN: pairs of different classes)."""
        class_N = torch.arange(self.num_classes * self.centers_per_class, device=device) // self.centers_per_class
        same_class_NN = class_N[:, None] == class_N[None, :]
        return torch.triu(same_class_NN, diagonal=1), ~same_class_NN

    def compute_loss(self, rows_ND: torch.Tensor) -> dict:
        expected = self.num_classes * self.centers_per_class
        if len(rows_ND) != expected:
            raise ValueError(f"{type(self).__name__} expects num_classes * centers_per_class = {expected} rows, "
                             f"got {len(rows_ND)}")
        sim_NN = self.distance(rows_ND)
        same_NN, diff_NN = self.class_masks(rows_ND.device)
        if self.collect_stats:
            with torch.no_grad():
                self.set_stats({"same_class_center_sim": sim_NN[same_NN].mean().item(),
                                "diff_class_center_sim": sim_NN[diff_NN].mean().item()})
        tiny = torch.finfo(rows_ND.dtype).tiny
        reg_P = torch.sqrt(2.0 + tiny - torch.clamp(2.0 * sim_NN[same_NN], max=2))
        return element_losses(reg_P, divisor=2 * same_NN.sum())
