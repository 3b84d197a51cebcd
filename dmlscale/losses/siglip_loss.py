"""SigLIP loss: a sigmoid over every image-text pair (open_clip's SigLipLoss, same numbers).

Legend: n local image rows, N text rows, D feature size.
L = -1/n sum_i sum_j log sigmoid(y_ij (s * x_i . t_j + b)), y_ij = +1 for the matching pair, -1 otherwise.
`siglip_row_loss_sum` takes local image rows, any text set and the global column of each row's match
(or -1 when its match is not in that set), so distributed and tiled paths sum the same terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dmlscale.kernels.clip_siglip import tiled_siglip_loss
from dmlscale.losses.tiled_pair_loss import TiledPairLoss, check_pair_features, check_scale, scaled_logits


def siglip_row_loss_sum(image_nD: torch.Tensor, text_ND: torch.Tensor, positive_col_n: torch.Tensor,
                        logit_scale: float | torch.Tensor, logit_bias: float | torch.Tensor) -> torch.Tensor:
    """Sum over the n x N pairs of -log sigmoid(y * logit); positive_col_n[i] is row i's matching column."""
    logits_nN = scaled_logits(image_nD, text_ND, logit_scale, logit_bias)
    cols_N = torch.arange(text_ND.shape[0], device=text_ND.device)
    signs_nN = (cols_N[None, :] == positive_col_n[:, None]).to(logits_nN.dtype) * 2 - 1
    return -F.logsigmoid(signs_nN * logits_nN).sum()


class SigLipLoss(TiledPairLoss):
    """Pairwise sigmoid loss with a learnt scale and bias (row i of each input is a pair); streamed
    tile by tile at `tiled_threshold` pairs and above (see TiledPairLoss)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor,
                logit_bias: float | torch.Tensor, output_dict: bool = False) -> torch.Tensor | dict:
        check_pair_features(image_features, text_features)
        check_scale("logit_scale", logit_scale)
        check_scale("logit_bias", logit_bias)
        if self.uses_tiles(image_features.shape[0]):
            loss = tiled_siglip_loss(image_features, text_features, logit_scale, logit_bias, tile=self.tile_size)
        else:
            positive_col_n = torch.arange(image_features.shape[0], device=image_features.device)
            loss = siglip_row_loss_sum(image_features, text_features, positive_col_n, logit_scale, logit_bias)
            loss = loss / image_features.shape[0]
        return {"contrastive_loss": loss} if output_dict else loss
