"""SphereFace (A-Softmax, Liu et al. 2017, arXiv:1704.08063), on the large-margin softmax template.

Legend: B queries, C classes; logits_BC one logit per (sample, class), norm_x_B each sample's L2 norm.
"""

from __future__ import annotations

import torch

from dmlscale.losses.large_margin_softmax_loss import LargeMarginSoftmaxLoss


class SphereFaceLoss(LargeMarginSoftmaxLoss):
    """Large-margin softmax with the weight norms left out (weights act as unit vectors):

        logit_ij = s * ||x_i||_2 * psi(theta_ij) for j = y_i, s * ||x_i||_2 * cos(theta_ij) otherwise,
        psi(theta) = (-1)^k cos(m theta) - 2k,   k = floor(theta m / pi)

    Same arguments and defaults as LargeMarginSoftmaxLoss (margin m = 4, scale s = 1); CosineSimilarity only.
    """

    def scale_logits(self, logits_BC: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        norm_x_B = torch.linalg.vector_norm(embeddings, ord=2, dim=1)
        return logits_BC * norm_x_B[:, None] * self.scale
