"""Large-margin softmax (L-Softmax, Liu et al. 2016, arXiv:1612.02295): the template of the angular-margin
family (ArcFace, CosFace, SphereFace, sub-center ArcFace), as in pytorch-metric-learning.

Legend: B queries, C classes, D embedding size; cos_BC the cosine of each sample to each class's weight,
cos_B / theta_B the cosine and angle to the sample's own class, psi_B its margin-modified cosine.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dmlscale.distances import BaseDistance, CosineSimilarity
from dmlscale.losses.class_weight_loss import ClassWeightLoss
from dmlscale.param_checks import check_real


def chebyshev_cos_multiple(cos_B: torch.Tensor, multiple: int) -> torch.Tensor:
    """cos(m * theta) as the Chebyshev polynomial T_m(cos theta), by T_{n+1} = 2c T_n - T_{n-1}: a polynomial in
    the cosine, so its gradient never passes through acos."""
    previous, current = torch.ones_like(cos_B), cos_B
    if multiple == 0:
        return previous
    for _ in range(multiple - 1):
        previous, current = current, 2 * cos_B * current - previous
    return current


class LargeMarginSoftmaxLoss(ClassWeightLoss):
    """Cross-entropy over s * ||W_j|| * ||x_i|| * cos, with the own class's cosine replaced by

        psi(theta) = (-1)^k cos(m theta) - 2k,     k = floor(theta m / pi),   theta = angle(x_i, W_{y_i})

    (Liu et al., eq. 6-7; m = margin, an integer >= 1; s = scale). Needs CosineSimilarity (the default).
    `avg_angle` (degrees) is recorded with collect_stats. The template of its family: subclasses change
    `check_margin`, `modify_cosine_of_target_classes` and `scale_logits`.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 4, scale: float = 1,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, **kwargs)
        self.require_distance(CosineSimilarity)
        self.margin = self.check_margin(margin)
        self.scale = check_real(type(self).__name__, "scale", scale, minimum=0, strict=True)
        self.add_to_recordable_attributes(list_of_names=["num_classes", "margin", "scale"], is_stat=False)
        self.add_to_recordable_attributes(name="avg_angle", is_stat=True)

    def get_default_distance(self) -> BaseDistance:
        return CosineSimilarity()

    def check_margin(self, margin: float) -> float:
        """The multiple m of the angle: an integer >= 1 (PML truncates with int(); a fraction is refused here)."""
        value = check_real(type(self).__name__, "margin", margin, minimum=1)
        if value != int(value):
            raise ValueError(f"{type(self).__name__}: margin must be an integer >= 1 (the angle multiple m), "
                             f"got {margin!r}")
        return int(value)

    def get_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos_BC: each sample against each class's weight column."""
        return self.distance(embeddings, self.class_weights(embeddings).t())

    def get_angles(self, cos_B: torch.Tensor) -> torch.Tensor:
        """theta_B = acos(cos) (cosines clamped to [-1, 1]); records `avg_angle` in degrees."""
        theta_B = torch.acos(torch.clamp(cos_B, -1, 1))
        if self.collect_stats:
            with torch.no_grad():
                self.set_stats({"avg_angle": math.degrees(theta_B.mean().item())})
        return theta_B

    def modify_cosine_of_target_classes(self, cos_B: torch.Tensor) -> torch.Tensor:
        """psi_B, the margin-modified cosine of each sample's own class."""
        cos_m_theta_B = chebyshev_cos_multiple(cos_B, self.margin)
        with torch.no_grad():
            k_B = torch.floor(self.get_angles(cos_B) / (math.pi / self.margin))
        sign_B = 1 - 2 * torch.remainder(k_B, 2)
        return sign_B * cos_m_theta_B - 2 * k_B

    def scale_logits(self, logits_BC: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """s * ||x_i|| * ||W_j|| * logit (the norms in the distance's p-norm)."""
        norm_x_B = self.distance.get_norm(embeddings)
        norm_w_C = self.distance.get_norm(self.class_weights(embeddings), dim=0)
        return logits_BC * (norm_w_C[None, :] * norm_x_B[:, None]) * self.scale

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale_logits(self.get_cosine(embeddings), embeddings)

    def training_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos_BC = self.get_cosine(embeddings)
        own_B1 = labels[:, None]
        psi_B = self.modify_cosine_of_target_classes(cos_BC.gather(1, own_B1).squeeze(1))
        return self.scale_logits(cos_BC.scatter(1, own_B1, psi_B[:, None]), embeddings)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, scale={self.scale}"
