"""Margin softmax (ArcFace, CosFace, normalised softmax) against a block of class weights, tile by tile.

Legend: N rows (the global batch), D embedding size, C classes of this block, T classes of one tile,
e_ND unit-norm embeddings, w_DC raw class weights (columns are classes, PML's layout),
cos_NT = e . w_c / |w_c|, logits = scale * cos, target_N the column of a row's class in this block
(-1 where the block does not hold it), *_N one value per row.

The block's contribution to the softmax normaliser is split in two so that any margin is plain autograd
on N values: `block_logsumexp` gives lse over the block's NON-target logits and the raw target cosine of
the rows whose class the block holds; the caller applies the margin to that cosine and folds the target
logit back in with logaddexp. No N x C matrix is ever held: the forward keeps O(N) per row, the backward
recomputes each N x T tile (4 products per tile in all: 1 forward, 3 backward) and writes the block's
weight gradient in place, column tile by column tile.

Partial log-sum-exps of different blocks (ranks) merge as lse = log sum_r exp(lse_r); the gradient
d lse / d lse_r = exp(lse_r - lse) is the share of the softmax mass in block r, so softmax with the
GLOBAL normaliser reaches the local logits (`merged_logsumexp`).
"""

from __future__ import annotations

import math

import torch

MARGIN_TYPES = ("arcface", "cosface", "normalized_softmax")
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's default, so the values match PML's CosineSimilarity


def _unit_columns(w_DT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w / max(|w|, eps), max(|w|, eps), |w| >= eps) per column, as F.normalize(w, dim=0) computes it."""
    norm_1T = w_DT.norm(2, 0, keepdim=True)
    denom_1T = norm_1T.clamp_min(_NORM_EPS)
    return w_DT / denom_1T, denom_1T, norm_1T >= _NORM_EPS


def _tile_targets(target_N: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns within the tile) of the target entries that fall in classes [c0, c1)."""
    rows = torch.nonzero((target_N >= c0) & (target_N < c1)).squeeze(1)
    return rows, target_N[rows] - c0


class _BlockLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_ND, w_DC, target_N, scale: float, tile: int):
        num_rows, num_classes = e_ND.shape[0], w_DC.shape[1]
        lse_N = torch.full((num_rows,), float("-inf"), dtype=e_ND.dtype, device=e_ND.device)
        cos_target_N = torch.zeros(num_rows, dtype=e_ND.dtype, device=e_ND.device)
        for c0 in range(0, num_classes, tile):
            c1 = min(c0 + tile, num_classes)
            w_hat_DT = _unit_columns(w_DC[:, c0:c1])[0]
            logits_NT = e_ND @ w_hat_DT
            rows, cols = _tile_targets(target_N, c0, c1)
            cos_target_N[rows] = logits_NT[rows, cols]
            logits_NT.mul_(scale)[rows, cols] = float("-inf")
            torch.logaddexp(lse_N, torch.logsumexp(logits_NT, dim=1), out=lse_N)
        ctx.save_for_backward(e_ND, w_DC, target_N, lse_N)
        ctx.scale, ctx.tile = scale, tile
        return lse_N, cos_target_N

    @staticmethod
    def backward(ctx, grad_lse_N, grad_cos_target_N):
        e_ND, w_DC, target_N, lse_N = ctx.saved_tensors
        scale, tile = ctx.scale, ctx.tile
        need_e, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_e_ND = torch.zeros_like(e_ND) if need_e else None
        grad_w_DC = torch.empty_like(w_DC) if need_w else None
        if grad_lse_N is None:
            grad_lse_N = torch.zeros_like(lse_N)
        if grad_cos_target_N is None:
            grad_cos_target_N = torch.zeros_like(lse_N)
        # a row with no non-target class in the block has lse = -inf and all its logits -inf: shift by 0
        safe_lse_N1 = torch.where(torch.isfinite(lse_N), lse_N, torch.zeros_like(lse_N))[:, None]
        row_weight_N1 = (grad_lse_N * scale)[:, None]  # d cos = scale * g * softmax-within-block
        for c0 in range(0, w_DC.shape[1], tile):
            c1 = min(c0 + tile, w_DC.shape[1])
            w_hat_DT, denom_1T, regular_1T = _unit_columns(w_DC[:, c0:c1])
            logits_NT = (e_ND @ w_hat_DT).mul_(scale)
            rows, cols = _tile_targets(target_N, c0, c1)
            logits_NT[rows, cols] = float("-inf")
            grad_cos_NT = logits_NT.sub_(safe_lse_N1).exp_().mul_(row_weight_N1)
            grad_cos_NT[rows, cols] = grad_cos_target_N[rows]
            if need_e:
                grad_e_ND.addmm_(grad_cos_NT, w_hat_DT.t())
            if need_w:
                grad_w_hat_DT = e_ND.t() @ grad_cos_NT
                radial_1T = (w_hat_DT * grad_w_hat_DT).sum(dim=0, keepdim=True) * regular_1T
                grad_w_DC[:, c0:c1] = grad_w_hat_DT.sub_(w_hat_DT * radial_1T).div_(denom_1T)
        return grad_e_ND, grad_w_DC, None, None, None


def block_logsumexp(e_ND: torch.Tensor, w_DC: torch.Tensor, target_N: torch.Tensor, *, scale: float,
                    tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse_N over this block's non-target logits scale * cos, target cosine cos_N of the rows whose class
    the block holds, 0 elsewhere), streamed over class tiles of width `tile`; exact gradients to e_ND
    and w_DC (through the column normalisation). A row with nothing left in the block gets -inf."""
    if e_ND.dtype != w_DC.dtype:
        raise ValueError(f"embeddings dtype {e_ND.dtype} differs from the class weights' dtype {w_DC.dtype}")
    return _BlockLogSumExp.apply(e_ND, w_DC, target_N, float(scale), int(tile))


def margin_target_logits(cos_N: torch.Tensor, *, margin_type: str, margin: float, scale: float) -> torch.Tensor:
    """scale * f(cos) for the target classes, with f as in pytorch-metric-learning:
    arcface f = cos(theta + m) while theta <= pi - m, else cos(theta) - m sin(m) (m in radians, theta =
    acos(clamp(cos, -1, 1))); cosface f = cos - m; normalized_softmax f = cos (no margin)."""
    if margin_type == "arcface":
        angles_N = torch.acos(torch.clamp(cos_N, -1, 1))
        modified_N = torch.where(angles_N <= math.pi - margin, torch.cos(angles_N + margin),
                                 torch.cos(angles_N) - margin * math.sin(margin))
    elif margin_type == "cosface":
        modified_N = cos_N - margin
    elif margin_type == "normalized_softmax":
        modified_N = cos_N
    else:
        raise ValueError(f"margin_type must be one of {MARGIN_TYPES}, got {margin_type!r}")
    return modified_N * scale


class _MergedLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part_lse_N, total_lse_N):
        ctx.save_for_backward(part_lse_N, total_lse_N)
        return total_lse_N.clone()

    @staticmethod
    def backward(ctx, grad_N):
        part_lse_N, total_lse_N = ctx.saved_tensors
        return grad_N * torch.exp(part_lse_N - total_lse_N), None


def merged_logsumexp(part_lse_N: torch.Tensor, total_lse_N: torch.Tensor) -> torch.Tensor:
    """The value `total_lse_N` (log sum over all parts of exp(part), computed by the caller, no gradient),
    with the gradient to this part: d total / d part = exp(part - total). Summed over the parts, this is
    exactly the gradient of the log-sum-exp of all logits; a part of -inf gets 0."""
    return _MergedLogSumExp.apply(part_lse_N, total_lse_N.detach())


class _TotalWithPartGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part_N, total_N):
        return total_N.clone()

    @staticmethod
    def backward(ctx, grad_N):
        return grad_N, None


def sum_with_part_grad(part_N: torch.Tensor, total_N: torch.Tensor) -> torch.Tensor:
    """The value `total_N` (the sum of all parts, computed by the caller), with the gradient of a sum to
    this part (identity): each part's owner receives the gradient of its own terms."""
    return _TotalWithPartGrad.apply(part_N, total_N.detach())


def multiplicative_angular_margin(cos_N: torch.Tensor, margin: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k+1) pi / m] (L-Softmax, SphereFace),
    with cos(m theta) = sum_n (-1)^n binom(m, 2n) cos^(m-2n) (1 - cos^2)^n written in the cosine itself, as
    pytorch-metric-learning computes it (so the gradient flows through cos, and k is a constant)."""
    cos_m_N = torch.zeros_like(cos_N)
    for n in range(margin // 2 + 1):
        cos_m_N = cos_m_N + (-1) ** n * math.comb(margin, 2 * n) * cos_N ** (margin - 2 * n) * (1 - cos_N ** 2) ** n
    with torch.no_grad():
        k_N = torch.floor(torch.acos(torch.clamp(cos_N, -1, 1)) / (math.pi / margin))
    return torch.where(k_N % 2 == 0, cos_m_N, -cos_m_N) - 2 * k_N
