"""CLIP and SigLIP tile kernels: the global similarity matrix is walked tile by tile and never materialised.

Legend: N pairs, D feature size, T tile size, raw_TT = img_T . txt_T^T for one tile,
logits = scale * raw + bias, *_N one value per row (image) or column (text).

CLIP (both directions) with an online log-sum-exp: one forward pass over the tiles keeps only the row
and column log-sum-exps (merged tile by tile with logaddexp, O(N)); the backward recomputes each tile and forms
its gradient G = g/(2N) * (softmax over the row + softmax over the column), accumulating
dimg += scale * G txt, dtxt += scale * G^T img, dscale += sum_i img_i . (G txt)_i, dbias += sum G. The positive
(diagonal) terms are O(N D) and handled apart. Cost: 4 tile matrix products per tile (1 forward, 3
backward) against 3 for the bare forward+backward of a materialised matrix, and one exp per element in
each pass; memory O(N D + T^2).
"""

from __future__ import annotations

import math

import torch

from dmlscale.kernels.tiles import DEFAULT_TILE, tiles
from dmlscale.param_checks import check_positive_int


def scalar_value(value: float | torch.Tensor) -> float:
    """A Python float from a number or a one-element tensor (scale and bias enter the GEMM as scalars)."""
    return float(value.detach().reshape(()).item()) if torch.is_tensor(value) else float(value)


def tile_logits(img_TD: torch.Tensor, txt_TD: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
    """logits_TT = scale * img txt^T + bias in one fused matrix product."""
    out_TT = torch.empty(img_TD.shape[0], txt_TD.shape[0], dtype=img_TD.dtype, device=img_TD.device)
    return torch.addmm(out_TT.fill_(bias), img_TD, txt_TD.t(), alpha=scale, out=out_TT)


def clip_lse(img_nD: torch.Tensor, txt_ND: torch.Tensor, scale: float, bias: float,
             tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (n) and column (N) log-sum-exp of logits = scale * img txt^T + bias, merged online over
    T x T tiles. With img the local rows of a larger batch, the column values are partial: combine
    them across ranks with a log-sum-exp all-reduce.

    One exp per tile element: E = exp(logits - row max) gives the rows, and the columns are
    (exp(row max - tile max) . E) with the tile max as shift; a column so far below the tile max that
    this sum nears underflow (< tiny^0.75) is recomputed exactly (rare: only at very large logit ranges)."""
    num_rows, num_cols = img_nD.shape[0], txt_ND.shape[0]
    row_lse_n = torch.full((num_rows,), float("-inf"), dtype=img_nD.dtype, device=img_nD.device)
    col_lse_N = torch.full((num_cols,), float("-inf"), dtype=img_nD.dtype, device=img_nD.device)
    underflow = torch.finfo(img_nD.dtype).tiny ** 0.75
    for r0, r1, c0, c1 in tiles(num_rows, num_cols, tile):
        logits_TT = tile_logits(img_nD[r0:r1], txt_ND[c0:c1], scale, bias)
        row_max_T = logits_TT.amax(dim=1)
        exp_TT = logits_TT.sub_(row_max_T[:, None]).exp_()  # in place: the logits are not needed again
        row_part_T = exp_TT.sum(dim=1).log_().add_(row_max_T)
        tile_max = row_max_T.max()
        col_sum_T = torch.exp(row_max_T - tile_max) @ exp_TT
        col_part_T = col_sum_T.log().add_(tile_max)
        low_T = col_sum_T < underflow
        if bool(low_T.any()):
            cols = torch.where(low_T)[0] + c0
            col_part_T[low_T] = torch.logsumexp(tile_logits(img_nD[r0:r1], txt_ND[cols], scale, bias), dim=0)
        torch.logaddexp(row_lse_n[r0:r1], row_part_T, out=row_lse_n[r0:r1])
        torch.logaddexp(col_lse_N[c0:c1], col_part_T, out=col_lse_N[c0:c1])
    return row_lse_n, col_lse_N


def clip_tile_grad(logits_TT: torch.Tensor, row_lse_T: torch.Tensor, col_lse_T: torch.Tensor,
                   buffer_TT: torch.Tensor) -> torch.Tensor:
    """G = softmax over the row + softmax over the column of one tile (consumes logits_TT).

    With top = max row lse, G = P_row + (P_row u_i) v_j, u = exp(row_lse - top) <= 1,
    v = exp(top - col_lse): one exp per element. When u or v could leave the float range (lse spread
    over 0.7 log(max)), both softmaxes are taken directly."""
    top = row_lse_T.max()
    safe_spread = 0.7 * math.log(torch.finfo(logits_TT.dtype).max)
    if float(top - row_lse_T.min()) < safe_spread and float(top - col_lse_T.min()) < safe_spread:
        row_soft_TT = logits_TT.sub_(row_lse_T[:, None]).exp_()
        grad_TT = torch.mul(row_soft_TT, torch.exp(row_lse_T - top)[:, None], out=buffer_TT)
        return torch.addcmul(row_soft_TT, grad_TT, torch.exp(top - col_lse_T)[None, :], out=grad_TT)
    grad_TT = torch.sub(logits_TT, row_lse_T[:, None], out=buffer_TT).exp_()
    return grad_TT.add_(logits_TT.sub_(col_lse_T[None, :]).exp_())


def accumulate_tile_grads(grad_TT: torch.Tensor, img_TD: torch.Tensor, txt_TD: torch.Tensor, dimg_TD: torch.Tensor,
                          dtxt_TD: torch.Tensor, alpha: float,
                          with_bias: bool = True) -> tuple[torch.Tensor | float, torch.Tensor]:
    """Given dL/dlogits of one tile (up to the factor alpha / scale), add alpha * G txt to dimg and
    alpha * G^T img to dtxt in place; return (sum G or 0 without a bias, sum_ij G_ij img_i . txt_j) for
    the bias and scale."""
    grad_txt_TD = grad_TT @ txt_TD
    dimg_TD.add_(grad_txt_TD, alpha=alpha)
    dtxt_TD.addmm_(grad_TT.t(), img_TD, alpha=alpha)
    return (grad_TT.sum() if with_bias else 0.0), (grad_txt_TD * img_TD).sum()


class TiledClipFunction(torch.autograd.Function):
    """Sum of CLIP terms of the local pairs, given complete row and column log-sum-exps.

    Local pair i is image row i and text column `col_offset + i`. Value:
    sum_i (row_lse_i - l_i,off+i) + sum_i (col_lse_off+i - l_i,off+i). Backward: for the local rows
    against all columns, G = softmax over the row + softmax over the column (complete statistics), minus
    2 on the local pairs; gradients reach the images, every text column, scale and bias. Summed over
    ranks (texts through the gather's backward) this is the exact gradient of the global sum.
    """

    @staticmethod
    def forward(ctx, img_nD: torch.Tensor, txt_ND: torch.Tensor, scale: float | torch.Tensor,
                bias: float | torch.Tensor | None, row_lse_n: torch.Tensor, col_lse_N: torch.Tensor, col_offset: int,
                tile: int) -> torch.Tensor:
        scale_value, bias_value = scalar_value(scale), (0.0 if bias is None else scalar_value(bias))
        num_rows = img_nD.shape[0]
        pos_raw_n = (img_nD * txt_ND[col_offset:col_offset + num_rows]).sum(dim=1)
        pos_n = scale_value * pos_raw_n + bias_value
        local_sum = (row_lse_n - pos_n).sum() + (col_lse_N[col_offset:col_offset + num_rows] - pos_n).sum()
        ctx.save_for_backward(img_nD, txt_ND, row_lse_n, col_lse_N, pos_raw_n)
        ctx.tile, ctx.scale_value, ctx.bias_value, ctx.col_offset = tile, scale_value, bias_value, col_offset
        ctx.scale_like = (scale.shape, scale.dtype) if torch.is_tensor(scale) else None
        ctx.bias_like = (bias.shape, bias.dtype) if torch.is_tensor(bias) else None
        return local_sum

    @staticmethod
    def backward(ctx, grad_sum: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        img_nD, txt_ND, row_lse_n, col_lse_N, pos_raw_n = ctx.saved_tensors
        num_rows, scale, offset = img_nD.shape[0], ctx.scale_value, ctx.col_offset
        weight = float(grad_sum)
        dimg_nD, dtxt_ND = torch.zeros_like(img_nD), torch.zeros_like(txt_ND)
        dscale = torch.zeros((), dtype=img_nD.dtype, device=img_nD.device)
        dbias = torch.zeros((), dtype=img_nD.dtype, device=img_nD.device)
        buffer_TT = None
        for r0, r1, c0, c1 in tiles(num_rows, txt_ND.shape[0], ctx.tile):
            img_TD, txt_TD = img_nD[r0:r1], txt_ND[c0:c1]
            logits_TT = tile_logits(img_TD, txt_TD, scale, ctx.bias_value)
            if buffer_TT is None or buffer_TT.shape != logits_TT.shape:
                buffer_TT = torch.empty_like(logits_TT)
            # G / weight = softmax over the row + softmax over the column
            grad_TT = clip_tile_grad(logits_TT, row_lse_n[r0:r1], col_lse_N[c0:c1], buffer_TT)
            bias_part, scale_part = accumulate_tile_grads(grad_TT, img_TD, txt_TD, dimg_nD[r0:r1], dtxt_ND[c0:c1],
                                                          scale * weight, with_bias=ctx.bias_like is not None)
            dbias += bias_part
            dscale += scale_part
        # positives: each local pair's logit enters both directions with weight -1
        dimg_nD.add_(txt_ND[offset:offset + num_rows], alpha=-2 * weight * scale)
        dtxt_ND[offset:offset + num_rows].add_(img_nD, alpha=-2 * weight * scale)
        dscale = weight * (dscale - 2 * pos_raw_n.sum())
        dbias = weight * (dbias - 2 * num_rows)
        grad_scale = None if ctx.scale_like is None else dscale.to(ctx.scale_like[1]).reshape(ctx.scale_like[0])
        grad_bias = None if ctx.bias_like is None else dbias.to(ctx.bias_like[1]).reshape(ctx.bias_like[0])
        return dimg_nD, dtxt_ND, grad_scale, grad_bias, None, None, None, None


def check_tile(tile: int) -> None:
    check_positive_int("tiled kernel", "tile", tile)


def tiled_clip_sum(img_nD: torch.Tensor, txt_ND: torch.Tensor, logit_scale: float | torch.Tensor,
                   logit_bias: float | torch.Tensor | None, row_lse_n: torch.Tensor, col_lse_N: torch.Tensor,
                   col_offset: int, tile: int) -> torch.Tensor:
    """Sum of the local pairs' CLIP terms (see TiledClipFunction); the statistics come from clip_lse."""
    return TiledClipFunction.apply(img_nD, txt_ND, logit_scale, logit_bias, row_lse_n, col_lse_N, col_offset, tile)


def tiled_clip_loss(img_ND: torch.Tensor, txt_ND: torch.Tensor, logit_scale: float | torch.Tensor,
                    logit_bias: float | torch.Tensor | None = None, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """CLIP loss (open_clip's value and gradients) without the N x N matrix."""
    check_tile(tile)
    bias_value = 0.0 if logit_bias is None else scalar_value(logit_bias)
    with torch.no_grad():
        row_lse_N, col_lse_N = clip_lse(img_ND.detach(), txt_ND.detach(), scalar_value(logit_scale), bias_value, tile)
    total = tiled_clip_sum(img_ND, txt_ND, logit_scale, logit_bias, row_lse_N, col_lse_N, 0, tile)
    return total / (2 * img_ND.shape[0])


class TiledSigLipFunction(torch.autograd.Function):
    """Sigmoid loss summed over all pairs of n image rows and N text columns, sum_ij -log sigmoid(y_ij * logit_ij),
    tile by tile; y_ij = +1 at column `col_offset + i` (this row's match), -1 elsewhere.

    Every pair is its own term, so no statistics are needed: the forward sums tile losses, the
    backward recomputes each tile with d/dlogit = -y * sigmoid(-y * logit). Gradients reach the
    images, every text column, scale and bias.
    """

    @staticmethod
    def forward(ctx, img_nD: torch.Tensor, txt_ND: torch.Tensor, scale: float | torch.Tensor,
                bias: float | torch.Tensor | None, col_offset: int, tile: int) -> torch.Tensor:
        scale_value, bias_value = scalar_value(scale), scalar_value(bias)
        total = torch.zeros((), dtype=torch.float64, device=img_nD.device)  # n N terms: accumulate in fp64
        for r0, r1, c0, c1 in tiles(img_nD.shape[0], txt_ND.shape[0], tile):
            logits_TT = tile_logits(img_nD[r0:r1], txt_ND[c0:c1], scale_value, bias_value)
            _flip_positives(logits_TT, r0 + col_offset, c0)  # y * logit: -logit off the matching pairs
            total -= torch.nn.functional.logsigmoid(logits_TT).sum(dtype=torch.float64)
        ctx.save_for_backward(img_nD, txt_ND)
        ctx.tile, ctx.scale_value, ctx.bias_value, ctx.col_offset = tile, scale_value, bias_value, col_offset
        ctx.scale_like, ctx.bias_like = (scale.shape, scale.dtype), (bias.shape, bias.dtype)
        return total.to(img_nD.dtype)

    @staticmethod
    def backward(ctx, grad_sum: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        img_nD, txt_ND = ctx.saved_tensors
        scale, weight, offset = ctx.scale_value, float(grad_sum), ctx.col_offset
        dimg_nD, dtxt_ND = torch.zeros_like(img_nD), torch.zeros_like(txt_ND)
        dscale = torch.zeros((), dtype=img_nD.dtype, device=img_nD.device)
        dbias = torch.zeros((), dtype=img_nD.dtype, device=img_nD.device)
        for r0, r1, c0, c1 in tiles(img_nD.shape[0], txt_ND.shape[0], ctx.tile):
            img_TD, txt_TD = img_nD[r0:r1], txt_ND[c0:c1]
            signed_TT = tile_logits(img_TD, txt_TD, scale, ctx.bias_value)
            _flip_positives(signed_TT, r0 + offset, c0)
            # d(-log sigmoid(y l))/dl = -y sigmoid(-y l)
            grad_TT = torch.sigmoid(signed_TT.neg_())
            _flip_positives(grad_TT, r0 + offset, c0)
            grad_TT.neg_()
            bias_part, scale_part = accumulate_tile_grads(grad_TT, img_TD, txt_TD, dimg_nD[r0:r1], dtxt_ND[c0:c1],
                                                          scale * weight)
            dbias += bias_part
            dscale += scale_part
        grad_scale = (weight * dscale).to(ctx.scale_like[1]).reshape(ctx.scale_like[0])
        grad_bias = (weight * dbias).to(ctx.bias_like[1]).reshape(ctx.bias_like[0])
        return dimg_nD, dtxt_ND, grad_scale, grad_bias, None, None


def _flip_positives(tile_TT: torch.Tensor, r0: int, c0: int) -> None:
    """Multiply a tile by y (+1 where global row r0 + i meets column r0 + i, -1 elsewhere), in place."""
    tile_TT.neg_()
    lo, hi = max(r0, c0), min(r0 + tile_TT.shape[0], c0 + tile_TT.shape[1])
    if lo < hi:
        idx = torch.arange(lo, hi, device=tile_TT.device)
        tile_TT[idx - r0, idx - c0] *= -1


def tiled_siglip_loss(img_ND: torch.Tensor, txt_ND: torch.Tensor, logit_scale: float | torch.Tensor,
                      logit_bias: float | torch.Tensor, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """SigLIP loss (open_clip's value and gradients) without the N x N matrix."""
    return tiled_siglip_sum(img_ND, txt_ND, logit_scale, logit_bias, 0, tile) / img_ND.shape[0]


def tiled_siglip_sum(img_nD: torch.Tensor, txt_ND: torch.Tensor, logit_scale: float | torch.Tensor,
                     logit_bias: float | torch.Tensor, col_offset: int, tile: int = DEFAULT_TILE) -> torch.Tensor:
    """Sum of the SigLIP terms of n local image rows against N texts, row i matching column col_offset + i."""
    check_tile(tile)
    return TiledSigLipFunction.apply(img_nD, txt_ND, logit_scale, logit_bias, col_offset, tile)
