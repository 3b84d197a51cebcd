"""P2SGrad (Zhang et al. 2019, arXiv:1905.02479): the mean squared error between the cosines to unit class
weights and the one-hot labels, whose gradient is the paper's P2SGrad update.

Legend: B queries, C classes, D embedding size (descriptors_dim); weight_DC the class weights (unit columns),
cos_BC the cosines, one_hot_BC the targets.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dmlscale.losses.class_weight_loss import check_class_inputs
from dmlscale.losses.base import BaseMetricLossFunction
from dmlscale.param_checks import check_positive_int


def unit_columns(weight_DC: torch.Tensor) -> torch.Tensor:
    """Each column scaled to norm 1 as PML does it: torch.renorm to 1e-5, then times 1e5. renorm divides by
    (norm + 1e-7), so a column ends at norm / (norm + 1e-7) of unit length (kept for parity), and a column of
    norm <= 1e-5 is left alone before the product."""
    return torch.renorm(weight_DC, p=2, dim=1, maxnorm=1e-5) * 1e5


class P2SGradLoss(BaseMetricLossFunction):
    """L = 1 / (B C) * sum_{i, j} (cos theta_ij - [j == y_i])^2,   cos theta_ij = clamp(x_i . w_j / ||x_i||, -1, 1)

    with unit class weights w_j (the columns of `weight`, descriptors_dim x num_classes, re-normalised in place
    before every call, as PML). Already reduced (the reducer sees one value); no indices_tuple, no ref_emb;
    the distance plays no part.
    """

    compares_to_reference = False

    def __init__(self, descriptors_dim: int, num_classes: int, **kwargs: Any) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "descriptors_dim", descriptors_dim)
        check_positive_int(owner, "num_classes", num_classes)
        if kwargs.get("distance") is not None:
            warnings.warn(f"{owner} computes its own cosines: the distance {type(kwargs['distance']).__name__} "
                          "has no effect", stacklevel=2)
        super().__init__(**kwargs)
        self.descriptors_dim = descriptors_dim
        self.num_classes = num_classes
        self.weight = torch.nn.Parameter(torch.empty(descriptors_dim, num_classes))
        with torch.no_grad():
            self.weight.uniform_(-1, 1)
            self.weight.copy_(unit_columns(self.weight))

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor | None, indices_tuple: tuple | None,
                     ref_emb: torch.Tensor, ref_labels: torch.Tensor | None, query_ref_index: torch.Tensor) -> dict:
        owner = type(self).__name__
        self.refuse_indices_tuple(indices_tuple, why="it scores every sample against every class")
        check_class_inputs(owner, embeddings, labels, ref_emb, ref_labels, num_classes=self.num_classes,
                           embedding_size=self.descriptors_dim)
        # swapped in through .data, as PML: no version bump, so two calls may share one backward
        self.weight.data = unit_columns(self.weight.data)
        weight_DC = self.weight.to(dtype=embeddings.dtype, device=embeddings.device)
        norm_x_B = torch.linalg.vector_norm(embeddings, ord=2, dim=1)
        cos_BC = torch.clamp((embeddings @ weight_DC) / norm_x_B[:, None], -1, 1)
        one_hot_BC = torch.nn.functional.one_hot(labels, self.num_classes).to(cos_BC.dtype)
        loss = torch.mean((cos_BC - one_hot_BC) ** 2)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}

    def extra_repr(self) -> str:
        return f"descriptors_dim={self.descriptors_dim}, num_classes={self.num_classes}"
