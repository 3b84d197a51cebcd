"""Distributed CLIP and SigLIP losses: local rows against gathered features, never an N x N matrix.

Legend: n local pairs, N global pairs, W world size, offset this rank's first global row.
CLIP: rank r computes image rows (n x N logits) and text rows (n x N) with targets offset + i;
L = (sum over all ranks of both row-loss sums) / (2N). SigLIP: rank r computes its n image rows
against all N texts; L = (sum over ranks) / N. Values are the single-process loss on the concatenated
batch; gradients follow `DistributedLoss`'s convention (W x this rank's share, exact after the
data-parallel average), for features, logit_scale and logit_bias alike.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dmlscale.distributed.collectives import (
    all_gather_with_grad,
    all_reduce_logsumexp_no_grad,
    all_reduce_sum_no_grad,
    gather_sizes,
    global_offsets,
    world_rank_and_size,
)
from dmlscale.kernels.clip_siglip import clip_lse, scalar_value, tiled_clip_sum, tiled_siglip_sum
from dmlscale.losses.clip_loss import clip_row_losses
from dmlscale.losses.siglip_loss import siglip_row_loss_sum
from dmlscale.losses.tiled_pair_loss import TiledPairLoss, check_pair_features, check_scale


def _global_value(local_sum: torch.Tensor, denominator: int, group) -> torch.Tensor:
    _, world_size = world_rank_and_size(group)
    total = all_reduce_sum_no_grad(local_sum.detach().to(torch.float64).reshape(1), group)[0]
    value = (total / denominator).to(local_sum.dtype)
    surrogate = world_size * local_sum / denominator
    return surrogate + (value - surrogate).detach()


def _gather_texts(image_features, text_features, group):
    """(all texts with gradient, global row of each local pair, global pair count, per-rank sizes, this
    rank's first global row)."""
    rank, _ = world_rank_and_size(group)
    check_pair_features(image_features, text_features)
    sizes = gather_sizes(text_features, group, name="text_features")
    all_text = all_gather_with_grad(text_features, group, sizes=sizes)
    offset = global_offsets(sizes)[rank]
    rows_n = torch.arange(image_features.shape[0], device=image_features.device) + offset
    return all_text, rows_n, sum(sizes), sizes, offset


class DistributedClipLoss(TiledPairLoss):
    """ClipLoss over the global batch; call it on each rank with that rank's matched pairs.

    At `tiled_threshold` global pairs and above (see TiledPairLoss) each rank streams its n rows
    against the gathered texts tile by tile: its image-row statistics are complete locally, the text
    columns' log-sum-exps are combined across ranks by one O(N) all-reduce, and no rank holds more than
    a tile of the matrix.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, **tiling: bool | int | None) -> None:
        super().__init__(**tiling)
        self.group = group

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float | None = None,
                output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        check_scale("logit_scale", logit_scale)
        if logit_bias is not None:
            check_scale("logit_bias", logit_bias)
        all_text, rows_n, total, sizes, offset = _gather_texts(image_features, text_features, self.group)
        if self.uses_tiles(total):
            local_sum = self._tiled_local_sum(image_features, all_text, logit_scale, logit_bias, offset)
        else:
            all_image = all_gather_with_grad(image_features, self.group, sizes=sizes)
            local_sum = (clip_row_losses(image_features, all_text, rows_n, logit_scale, logit_bias).sum()
                         + clip_row_losses(text_features, all_image, rows_n, logit_scale, logit_bias).sum())
        loss = _global_value(local_sum, 2 * total, self.group)
        return {"contrastive_loss": loss} if output_dict else loss

    def _tiled_local_sum(self, image_nD, all_text_ND, logit_scale, logit_bias, offset: int):
        scale, bias = scalar_value(logit_scale), (0.0 if logit_bias is None else scalar_value(logit_bias))
        with torch.no_grad():
            row_lse_n, partial_col_lse_N = clip_lse(image_nD.detach(), all_text_ND.detach(), scale, bias, self.tile_size)
        col_lse_N = all_reduce_logsumexp_no_grad(partial_col_lse_N, self.group)
        return tiled_clip_sum(image_nD, all_text_ND, logit_scale, logit_bias, row_lse_n, col_lse_N, offset,
                              self.tile_size)


class DistributedSigLipLoss(TiledPairLoss):
    """SigLipLoss over the global batch: every image against every text of every rank.

    At `tiled_threshold` global pairs and above (see TiledPairLoss) each rank streams its n image rows
    against the gathered texts tile by tile (every pair is its own term: no statistics to combine), so
    no rank holds more than a tile of the matrix.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, **tiling: bool | int | None) -> None:
        super().__init__(**tiling)
        self.group = group

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float,
                output_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        check_scale("logit_scale", logit_scale)
        check_scale("logit_bias", logit_bias)
        all_text, rows_n, total, _, offset = _gather_texts(image_features, text_features, self.group)
        if self.uses_tiles(total):
            local_sum = tiled_siglip_sum(image_features, all_text, logit_scale, logit_bias, offset, self.tile_size)
        else:
            local_sum = siglip_row_loss_sum(image_features, all_text, rows_n, logit_scale, logit_bias)
        loss = _global_value(local_sum, total, self.group)
        return {"contrastive_loss": loss} if output_dict else loss
