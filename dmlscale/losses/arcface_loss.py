"""ArcFace (additive angular margin, Deng et al. 2019, arXiv:1801.07698), on the large-margin softmax template.

Legend: B queries, C classes; cos_B / theta_B the cosine and angle of each sample to its own class's
weight, logits_BC one logit per (sample, class).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.losses.large_margin_softmax_loss import LargeMarginSoftmaxLoss
from dmlscale.param_checks import check_real


class ArcFaceLoss(LargeMarginSoftmaxLoss):
    """Cross-entropy over s * cos(theta_j), the own class's angle widened by m = radians(margin):

        psi(theta) = cos(theta + m)            if theta <= pi - m
                   = cos(theta) - m sin(m)     otherwise (keeps psi decreasing in theta)

    margin is in degrees (default 28.6, i.e. m = 0.5 rad), scale s = 64; CosineSimilarity only.
    `margin` keeps the degrees it was given (PML overwrites it with radians); `margin_radians` holds m.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, margin=margin, scale=scale, **kwargs)
        self.margin_radians = math.radians(self.margin)

    def check_margin(self, margin: float) -> float:
        """An angle in degrees, in [0, 180)."""
        value = check_real(type(self).__name__, "margin", margin, minimum=0)
        if value >= 180:
            raise ValueError(f"{type(self).__name__}: margin is an angle in degrees and must be in [0, 180), "
                             f"got {margin!r}")
        return value

    def modify_cosine_of_target_classes(self, cos_B: torch.Tensor) -> torch.Tensor:
        theta_B = self.get_angles(cos_B)
        m = self.margin_radians
        return torch.where(theta_B <= math.pi - m, torch.cos(theta_B + m), torch.cos(theta_B) - m * math.sin(m))

    def scale_logits(self, logits_BC: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """s * cos: the norms play no part."""
        return logits_BC * self.scale
