"""TiledPairLoss: the base of the image-text losses (ClipLoss, SigLipLoss), and the checks and logits they share.

Legend: n query rows, N reference rows, D feature size; row i of the image and text features is a pair.
"""

from __future__ import annotations

import torch

from dmlscale.kernels.tiles import DEFAULT_TILE, TilingSwitch


class TiledPairLoss(TilingSwitch, torch.nn.Module):
    """Base of the image-text losses: picks the streamed kernel above a batch-size threshold.

    `tiled`: None picks it when the batch has at least `tiled_threshold` pairs; True/False force
    either path. Both paths give the same value and gradients.
    """

    def __init__(self, *, tiled: bool | None = None, tile_size: int = DEFAULT_TILE,
                 tiled_threshold: int = 4096) -> None:
        super().__init__()
        self.set_tiling(tiled, tile_size, tiled_threshold)


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


def check_scale(name: str, value: float | torch.Tensor) -> None:
    """Raise a ValueError naming `name` unless `value` is a number or a one-element tensor."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one number (shape [] or [1]), got shape {tuple(value.shape)}")
    elif not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")


def scaled_logits(query_nD: torch.Tensor, ref_ND: torch.Tensor, logit_scale: float | torch.Tensor,
                  logit_bias: float | torch.Tensor | None = None) -> torch.Tensor:
    """logits_nN = logit_scale * query . ref^T (+ logit_bias)."""
    logits_nN = logit_scale * (query_nD @ ref_ND.t())
    return logits_nN if logit_bias is None else logits_nN + logit_bias
