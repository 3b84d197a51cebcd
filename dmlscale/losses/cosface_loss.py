"""CosFace (large margin cosine loss, Wang et al. 2018, arXiv:1801.09414), on the large-margin softmax template.

Legend: B queries, C classes; cos_B the cosine of each sample to its own class's weight.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlscale.losses.large_margin_softmax_loss import LargeMarginSoftmaxLoss
from dmlscale.param_checks import check_real


class CosFaceLoss(LargeMarginSoftmaxLoss):
    """Cross-entropy over s * cos(theta_j), the own class's cosine lowered by the margin m:

        L_i = -log( e^{s (cos theta_{y_i} - m)} / (e^{s (cos theta_{y_i} - m)} + sum_{j != y_i} e^{s cos theta_j}) )

    margin m = 0.35, scale s = 64; CosineSimilarity only. `avg_angle` is recorded with collect_stats.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, embedding_size, margin=margin, scale=scale, **kwargs)

    def check_margin(self, margin: float) -> float:
        """Any finite cosine offset."""
        return check_real(type(self).__name__, "margin", margin)

    def modify_cosine_of_target_classes(self, cos_B: torch.Tensor) -> torch.Tensor:
        if self.collect_stats:
            with torch.no_grad():
                self.get_angles(cos_B)  # records avg_angle
        return cos_B - self.margin

    def scale_logits(self, logits_BC: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """s * cos: the norms play no part."""
        return logits_BC * self.scale
