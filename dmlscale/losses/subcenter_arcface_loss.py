"""Sub-center ArcFace (Deng et al. 2020, ECCV): ArcFace with several weight columns per class, each class
scored by its closest sub-center; `get_outliers` finds samples far from their class's dominant sub-center.

Legend: B queries, C classes, K sub-centers per class, D embedding size; W_DK... the weights, laid out class
by class (columns c*K .. c*K + K - 1 belong to class c); cos_BCK / cos_BC the cosines before / after the max.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.losses.arcface_loss import ArcFaceLoss
from dmlscale.param_checks import check_positive_int, check_real


class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace over cos(theta_ij) = max_k cos(x_i, W_{j,k}), K = sub_centers columns per class (W is
    embedding_size x num_classes * sub_centers). margin in degrees (28.6), scale 64, sub_centers 3."""

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64,
                 sub_centers: int = 3, **kwargs: Any) -> None:
        check_positive_int(type(self).__name__, "sub_centers", sub_centers)
        self.sub_centers = sub_centers  # read by columns_per_class while the weights are built
        super().__init__(num_classes, embedding_size, margin=margin, scale=scale, **kwargs)

    def columns_per_class(self) -> int:
        return self.sub_centers

    def get_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        cos_BCK = self.distance(embeddings, self.class_weights(embeddings).t()).view(
            len(embeddings), self.num_classes, self.sub_centers)
        return cos_BCK.max(dim=2).values  # gradient to the closest sub-center only, as PML

    def get_outliers(self, embeddings: torch.Tensor, labels: torch.Tensor, threshold: float = 75,
                     return_dominant_centers: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(outlier row indices, dominant_centers_DC). A class's dominant sub-center is the one closest to most of
        its samples (the first on ties); a sample is an outlier when its angle to that sub-center exceeds
        `threshold` degrees. Outliers are listed class by class. A class absent from the batch gets a zero
        column (PML leaves it uninitialised); with return_dominant_centers=False only the outliers come back
        (PML returns the pair either way)."""
        check_real(type(self).__name__, "threshold", threshold)
        if labels.ndim != 1 or len(labels) != len(embeddings):
            raise ValueError(f"labels must have shape ({len(embeddings)},), got {tuple(labels.shape)}")
        cos_threshold = math.cos(math.radians(threshold))
        outliers: list[torch.Tensor] = []
        with torch.no_grad():
            W_DCK = self.class_weights(embeddings).view(self.embedding_size, self.num_classes, self.sub_centers)
            dominant_DC = torch.zeros(self.embedding_size, self.num_classes, dtype=embeddings.dtype,
                                      device=embeddings.device)
            for label in range(self.num_classes):
                rows = torch.nonzero(labels == label).flatten()
                if len(rows) == 0:
                    continue
                cos_NK = self.distance(embeddings[rows], W_DCK[:, label, :].t())
                votes_K = torch.bincount(torch.argmax(cos_NK, dim=1), minlength=self.sub_centers)
                dominant = int(torch.argmax(votes_K))
                dominant_DC[:, label] = W_DCK[:, label, dominant]
                outliers.append(rows[cos_NK[:, dominant] < cos_threshold])
        found = torch.cat(outliers) if outliers else torch.empty(0, dtype=torch.long, device=embeddings.device)
        return (found, dominant_DC) if return_dominant_centers else found

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sub_centers={self.sub_centers}"
