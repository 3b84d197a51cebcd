"""Streamed tile kernels: the global similarity matrix is walked tile by tile and never materialised.

Legend: N pairs, D feature size, T tile size, raw_TT = img_T . txt_T^T for one tile,
logits = scale * raw + bias, *_N one value per row (image) or column (text).

CLIP (both directions) with an online log-sum-exp: one forward pass over the tiles keeps only the row
and column statistics (running max and sum of exp, O(N)); the backward recomputes each tile and forms
its gradient G = g/(2N) * (softmax over the row + softmax over the column), accumulating
dimg += scale * G txt, dtxt += scale * G^T img, dscale += sum G * raw, dbias += sum G. The positive
(diagonal) terms are O(N D) and handled apart. Cost: 4 tile matrix products per tile (1 forward, 3
backward) against 3 for the bare forward+backward of a materialised matrix; memory O(N D + T^2).
"""

from __future__ import annotations

import torch

DEFAULT_TILE = 1024


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _online_update(max_n: torch.Tensor, sum_n: torch.Tensor, tile_max_n: torch.Tensor, tile_sum_at_max_n: torch.Tensor):
    """Merge a tile's (max, sum of exp(x - max)) into running statistics, in place."""
    new_max = torch.maximum(max_n, tile_max_n)
    sum_n.mul_(torch.exp(max_n - new_max)).add_(tile_sum_at_max_n * torch.exp(tile_max_n - new_max))
    max_n.copy_(new_max)


def clip_lse(img_ND, txt_ND, scale, bias, tile: int):
    """Row and column log-sum-exp of logits = scale * img txt^T + bias, streamed over T x T tiles."""
    num_rows, stat = img_ND.shape[0], _stat_dtype(img_ND.dtype)
    row_lse_N = torch.empty(num_rows, dtype=stat, device=img_ND.device)
    col_max_N = torch.full((num_rows,), float("-inf"), dtype=stat, device=img_ND.device)
    col_sum_N = torch.zeros(num_rows, dtype=stat, device=img_ND.device)
    for r0 in range(0, num_rows, tile):
        r1 = min(r0 + tile, num_rows)
        row_max_T = torch.full((r1 - r0,), float("-inf"), dtype=stat, device=img_ND.device)
        row_sum_T = torch.zeros(r1 - r0, dtype=stat, device=img_ND.device)
        for c0 in range(0, num_rows, tile):
            c1 = min(c0 + tile, num_rows)
            logits_TT = (scale * (img_ND[r0:r1] @ txt_ND[c0:c1].t()) + bias).to(stat)
            tile_row_max = logits_TT.amax(dim=1)
            _online_update(row_max_T, row_sum_T, tile_row_max, torch.exp(logits_TT - tile_row_max[:, None]).sum(1))
            tile_col_max = logits_TT.amax(dim=0)
            _online_update(col_max_N[c0:c1], col_sum_N[c0:c1], tile_col_max,
                           torch.exp(logits_TT - tile_col_max[None, :]).sum(0))
        row_lse_N[r0:r1] = row_max_T + torch.log(row_sum_T)
    return row_lse_N, col_max_N + torch.log(col_sum_N)


class TiledClipFunction(torch.autograd.Function):
    """Symmetric InfoNCE over matched rows, exact, with O(N D + T^2) memory."""

    @staticmethod
    def forward(ctx, img_ND, txt_ND, scale, bias, tile):
        scale_value = scale.detach().reshape(()) if torch.is_tensor(scale) else torch.tensor(float(scale))
        bias_value = bias.detach().reshape(()) if torch.is_tensor(bias) else torch.tensor(float(bias or 0.0))
        scale_value = scale_value.to(img_ND.dtype)
        bias_value = bias_value.to(img_ND.dtype)
        row_lse_N, col_lse_N = clip_lse(img_ND, txt_ND, scale_value, bias_value, tile)
        pos_raw_N = (img_ND * txt_ND).sum(dim=1)
        pos_N = (scale_value * pos_raw_N + bias_value).to(row_lse_N.dtype)
        num_rows = img_ND.shape[0]
        loss = ((row_lse_N - pos_N).sum() + (col_lse_N - pos_N).sum()) / (2 * num_rows)
        ctx.save_for_backward(img_ND, txt_ND, row_lse_N, col_lse_N, pos_raw_N, scale_value, bias_value)
        ctx.tile = tile
        ctx.scale_like = (scale.shape, scale.dtype) if torch.is_tensor(scale) else None
        ctx.bias_like = (bias.shape, bias.dtype) if torch.is_tensor(bias) else None
        return loss.to(img_ND.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        img_ND, txt_ND, row_lse_N, col_lse_N, pos_raw_N, scale_value, bias_value = ctx.saved_tensors
        num_rows, tile, stat = img_ND.shape[0], ctx.tile, row_lse_N.dtype
        weight = (grad_loss.to(stat) / (2 * num_rows))
        dimg_ND, dtxt_ND = torch.zeros_like(img_ND), torch.zeros_like(txt_ND)
        dscale = torch.zeros((), dtype=stat, device=img_ND.device)
        dbias = torch.zeros((), dtype=stat, device=img_ND.device)
        for r0 in range(0, num_rows, tile):
            r1 = min(r0 + tile, num_rows)
            for c0 in range(0, num_rows, tile):
                c1 = min(c0 + tile, num_rows)
                raw_TT = img_ND[r0:r1] @ txt_ND[c0:c1].t()
                logits_TT = (scale_value * raw_TT + bias_value).to(stat)
                grad_TT = (torch.exp(logits_TT - row_lse_N[r0:r1, None])
                           + torch.exp(logits_TT - col_lse_N[None, c0:c1])) * weight
                dscale += (grad_TT * raw_TT.to(stat)).sum()
                dbias += grad_TT.sum()
                grad_TT = grad_TT.to(img_ND.dtype)
                dimg_ND[r0:r1] += scale_value * (grad_TT @ txt_ND[c0:c1])
                dtxt_ND[c0:c1] += scale_value * (grad_TT.t() @ img_ND[r0:r1])
        # positives: each diagonal logit enters both directions with weight -1
        pos_weight = (2 * weight).to(img_ND.dtype)
        dimg_ND -= pos_weight * scale_value * txt_ND
        dtxt_ND -= pos_weight * scale_value * img_ND
        dscale -= 2 * weight * pos_raw_N.to(stat).sum()
        dbias -= 2 * weight * num_rows
        grad_scale = None if ctx.scale_like is None else dscale.to(ctx.scale_like[1]).reshape(ctx.scale_like[0])
        grad_bias = None if ctx.bias_like is None else dbias.to(ctx.bias_like[1]).reshape(ctx.bias_like[0])
        return dimg_ND, dtxt_ND, grad_scale, grad_bias, None


def tiled_clip_loss(img_ND: torch.Tensor, txt_ND: torch.Tensor, logit_scale, logit_bias=None,
                    tile: int = DEFAULT_TILE) -> torch.Tensor:
    """CLIP loss (open_clip's value and gradients) without the N x N matrix."""
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    return TiledClipFunction.apply(img_ND, txt_ND, logit_scale, logit_bias, tile)
