"""CLIP loss: symmetric image-to-text and text-to-image InfoNCE (open_clip's ClipLoss, same numbers).

Legend: n local rows, N reference (global) rows, D feature size.
L = 1/2 [ mean_i CE(s * x_i . T^T + b, i) + mean_j CE(s * t_j . X^T + b, j) ],
s = logit_scale (the multiplier itself, as open_clip passes it: exp of the learnt log-scale), b an optional
logit_bias. `clip_row_losses` computes the cross-entropy of local query rows against any reference set with
explicit global targets: the distributed and tiled paths call it with their own rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlscale.kernels.clip_siglip import tiled_clip_loss
from dmlscale.losses.tiled_pair_loss import TiledPairLoss, check_pair_features, check_scale, scaled_logits


def clip_row_losses(query_nD: torch.Tensor, ref_ND: torch.Tensor, targets_n: torch.Tensor,
                    logit_scale: float | torch.Tensor, logit_bias: float | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each query row over all reference rows, the target being the row `targets_n[i]`."""
    return F.cross_entropy(scaled_logits(query_nD, ref_ND, logit_scale, logit_bias), targets_n, reduction="none")


class ClipLoss(TiledPairLoss):
    """Symmetric InfoNCE over matched image-text pairs (row i of each is a pair).

    `tiled`: None picks the streamed kernel (`kernels/clip_siglip.py`, memory O(N D + tile^2) instead of
    O(N^2)) when the batch has at least `tiled_threshold` pairs; True/False force either path. Both
    give the same value and gradients.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor,
                logit_bias: float | torch.Tensor | None = None, output_dict: bool = False) -> torch.Tensor | dict:
        check_pair_features(image_features, text_features)
        check_scale("logit_scale", logit_scale)
        if logit_bias is not None:
            check_scale("logit_bias", logit_bias)
        if self.uses_tiles(image_features.shape[0]):
            loss = tiled_clip_loss(image_features, text_features, logit_scale, logit_bias, tile=self.tile_size)
            return {"contrastive_loss": loss} if output_dict else loss
        targets_n = torch.arange(image_features.shape[0], device=image_features.device)
        image_to_text = clip_row_losses(image_features, text_features, targets_n, logit_scale, logit_bias).mean()
        text_to_image = clip_row_losses(text_features, image_features, targets_n, logit_scale, logit_bias).mean()
        loss = (image_to_text + text_to_image) / 2
        return {"contrastive_loss": loss} if output_dict else loss
