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

from dmlscale.losses.tiled import TiledPairLoss, tiled_clip_loss


def check_pair_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise a ValueError naming the shapes unless both are n x D with the same n and D."""
    for name, feats in (("image_features", image_features), ("text_features", text_features)):
        if not torch.is_tensor(feats) or feats.ndim != 2 or not feats.is_floating_point():
            shape = tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__
            raise ValueError(f"{name} must be a 2-D floating tensor (batch, dim), got {shape}")
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features {tuple(text_features.shape)} must have "
            "the same shape (one caption per image)"
        )


def check_scale(name: str, value) -> None:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one number (shape [] or [1]), got shape {tuple(value.shape)}")
    elif not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")


def scaled_logits(query_nD: torch.Tensor, ref_ND: torch.Tensor, logit_scale, logit_bias=None) -> torch.Tensor:
    """logits_nN = logit_scale * query . ref^T (+ logit_bias)."""
    logits_nN = logit_scale * (query_nD @ ref_ND.t())
    return logits_nN if logit_bias is None else logits_nN + logit_bias


def clip_row_losses(query_nD, ref_ND, targets_n, logit_scale, logit_bias=None) -> torch.Tensor:
    """Cross-entropy of each query row over all reference rows, the target being the row `targets_n[i]`."""
    return F.cross_entropy(scaled_logits(query_nD, ref_ND, logit_scale, logit_bias), targets_n, reduction="none")


class ClipLoss(TiledPairLoss):
    """Symmetric InfoNCE over matched image-text pairs (row i of each is a pair).

    `tiled`: None picks the streamed kernel (`losses/tiled.py`, memory O(N D + tile^2) instead of
    O(N^2)) when the batch has at least `tiled_threshold` pairs; True/False force either path. Both
    give the same value and gradients.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias=None, output_dict: bool = False):
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
